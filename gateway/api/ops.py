"""Operations endpoints: /health (liveness), /ready (every model has a worker taking traffic,
and what the gateway knows of each worker), /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.deps import State
from gateway.routing.registry import Worker
from gateway.state import AppState

router = APIRouter()


@router.get("/health", response_model=None)
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/ready", response_model=None)
async def ready(state: State) -> Response:
    routes = state.registry.routes()
    now = asyncio.get_running_loop().time()
    if state.settings.health_interval:  # the health monitor's view, never older than a round
        taking = [[w.takes_traffic(now) for w in route.workers] for route in routes]
    else:  # no active probing: ask each worker now
        timeout = state.settings.ready_probe_timeout
        taking = await asyncio.gather(
            *(
                asyncio.gather(*(_probe_now(state, w, now, timeout) for w in route.workers))
                for route in routes
            )
        )
    models = {
        route.name: [w.name for w, ok in zip(route.workers, oks, strict=True) if ok]
        for route, oks in zip(routes, taking, strict=True)
    }
    draining = state.drain.draining  # shutting down: take this gateway out of rotation
    is_ready = all(models.values()) and not draining
    stale_after = state.health.settings.stale_after
    workers = {
        f"{w.model}/{w.name}": _worker_state(state, w, now, stale_after)
        for w in state.registry.workers()
    }
    queues = {route.name: state.dispatcher.queue(route.name).size for route in routes}
    body = orjson.dumps(
        {
            "status": "draining" if draining else "ready" if is_ready else "not_ready",
            "models": models,
            "workers": workers,
            "queued": queues,
        }
    )
    return Response(body, 200 if is_ready else 503, media_type="application/json")


def _worker_state(
    state: AppState, worker: Worker, now: float, stale_after: float
) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "up": worker.up,
        "draining": worker.draining,
        "ejected_for": round(max(worker.ejected_until - now, 0.0), 3),
        "inflight": worker.inflight,
        "saturation": worker.known_saturation(now, stale_after),
    }
    route = state.registry.route(worker.model)
    if route is not None and route.prefix is not None:
        shown["prefix_blocks"] = route.prefix.index.size(worker.slot)  # the index's view
        if route.prefix.exact is not None:  # precise mode: the blocks its events say it holds
            shown["kv_blocks"] = route.prefix.exact.size(worker.slot)
    return shown


async def _probe_now(state: AppState, worker: Worker, now: float, seconds: float) -> bool:
    if now < worker.ejected_until:
        return False
    return await state.probe.fetch(worker.url + "/health", seconds) is not None


@router.get("/metrics", response_model=None)
async def metrics(state: State) -> Response:
    body, content_type = state.metrics.render()
    return Response(body, headers={"content-type": content_type})
