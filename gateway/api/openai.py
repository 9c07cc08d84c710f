"""The OpenAI API: /v1/chat/completions, /v1/completions, /v1/models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import State
from gateway.errors import ModelNotFound, PayloadTooLarge
from gateway.relay import RelayResponse
from gateway.validation import Endpoint, parse_request

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request, state: State) -> Response:
    return await _relay(request, state, Endpoint.CHAT)


@router.post("/v1/completions", response_model=None)
async def completions(request: Request, state: State) -> Response:
    return await _relay(request, state, Endpoint.COMPLETIONS)


@router.get("/v1/models", response_model=None)
async def list_models(state: State) -> Response:
    return Response(state.models_body, media_type="application/json")


async def _relay(request: Request, state: State, endpoint: Endpoint) -> Response:
    body = await read_body(request, state.settings.max_body_bytes)
    view = parse_request(endpoint, body)
    route = state.registry.route(view.model)
    if route is None:
        raise ModelNotFound(view.model)
    request.state.model = route.name  # a configured name: a bounded metrics label
    return RelayResponse(state, view, route, request.state.request_id)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes before buffering them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)
