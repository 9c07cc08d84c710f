"""GET /v1/models: the configured models, and each LoRA adapter as a model whose `parent` is
its base (as vLLM lists them). The model-addressed POST routes are in api/relayed.py."""

from __future__ import annotations

import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.auth import authenticate
from gateway.api.deps import State
from gateway.api.usage import usage_route
from gateway.config.models import ModelsConfig

router = APIRouter()
router.add_api_route("/v1/usage", usage_route, methods=["GET"], response_model=None)


def models_payload(config: ModelsConfig) -> bytes:
    """GET /v1/models's answer, rendered once per configuration."""
    created = int(time.time())
    data: list[dict[str, object]] = []
    for model in config.models:
        data.append(
            {"id": model.name, "object": "model", "created": created, "owned_by": "gateway"}
        )
        data += [
            {
                "id": adapter.name,
                "object": "model",
                "created": created,
                "owned_by": "gateway",
                "parent": model.name,
            }
            for adapter in model.adapters
        ]
    return orjson.dumps({"object": "list", "data": data})


@router.get("/v1/models", response_model=None)
async def list_models(request: Request, state: State) -> Response:
    principal = authenticate(request.scope["headers"], state.keys)
    if principal.models is None:
        return Response(state.models_body, media_type="application/json")
    doc = orjson.loads(state.models_body)
    doc["data"] = [m for m in doc["data"] if m["id"] in principal.models]
    return Response(orjson.dumps(doc), media_type="application/json")
