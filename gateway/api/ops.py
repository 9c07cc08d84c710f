"""Operations endpoints: /health (liveness), /ready (every model has a worker), /metrics."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.deps import State

router = APIRouter()


@router.get("/health", response_model=None)
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/ready", response_model=None)
async def ready(state: State) -> Response:
    routes = state.registry.routes()
    timeout = state.settings.ready_probe_timeout
    checks = [
        [state.upstream.probe(worker.url + "/health", timeout) for worker in route.workers]
        for route in routes
    ]
    answers = await asyncio.gather(*(asyncio.gather(*probes) for probes in checks))
    models = {
        route.name: [w.name for w, ok in zip(route.workers, oks, strict=True) if ok]
        for route, oks in zip(routes, answers, strict=True)
    }
    is_ready = all(models.values())
    body = orjson.dumps({"status": "ready" if is_ready else "not_ready", "models": models})
    return Response(body, 200 if is_ready else 503, media_type="application/json")


@router.get("/metrics", response_model=None)
async def metrics(state: State) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, headers={"content-type": content_type})
