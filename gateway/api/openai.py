"""The OpenAI API: /v1/chat/completions and /v1/completions (the hot path), /v1/models.

The two completion routes are called by the outer middleware with the request's record: no
FastAPI request parsing or dependency solving per request, only what the gateway needs.
"""

from __future__ import annotations

import os
import time

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.api.auth import authenticate
from gateway.api.body import read_body
from gateway.api.deps import State
from gateway.api.usage import effective_priority, settle, usage_route
from gateway.api.validation import parse_request
from gateway.config.keys import Principal
from gateway.config.models import ModelsConfig
from gateway.config.settings import Settings
from gateway.errors import GatewayError, ModelNotFound
from gateway.limits.limiter import Reservation
from gateway.limits.reserve import reserve_tokens
from gateway.record import RequestRecord
from gateway.relay.amend import body_asking_usage, body_prioritized, body_tagged
from gateway.relay.lease import WorkerLease
from gateway.relay.relay import Outbound, Relay
from gateway.relay.usage import UsageTap
from gateway.request import Endpoint, RequestView
from gateway.routing.admission import ModelQueue
from gateway.routing.cache_aware import PrefixRouting
from gateway.routing.policy import Preference
from gateway.state import AppState

router = APIRouter()
router.add_api_route("/v1/usage", usage_route, methods=["GET"], response_model=None)


def models_payload(config: ModelsConfig) -> bytes:
    """GET /v1/models's answer, rendered once per configuration."""
    created = int(time.time())
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": m.name, "object": "model", "created": created, "owned_by": "gateway"}
                for m in config.models
            ],
        }
    )


@router.get("/v1/models", response_model=None)
async def list_models(request: Request, state: State) -> Response:
    principal = authenticate(request.scope["headers"], state.keys)
    if principal.models is None:
        return Response(state.models_body, media_type="application/json")
    doc = orjson.loads(state.models_body)
    doc["data"] = [m for m in doc["data"] if m["id"] in principal.models]
    return Response(orjson.dumps(doc), media_type="application/json")


class CompletionRoute:
    """POST handler for one completion endpoint: authenticate, validate, limit, relay, settle."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(
        self, record: RequestRecord, scope: Scope, receive: Receive, send: Send
    ) -> None:
        state: AppState = scope["app"].state.gateway
        try:
            principal = authenticate(scope["headers"], state.keys)
            record.key = principal.name
            body = await read_body(scope, receive, state.settings.max_body_bytes)
            view = record.view = parse_request(self.endpoint, body)
            queue = _queue_for(state, principal, view.model)
            priority = effective_priority(principal, scope["headers"], view)
            reservation = await _admit(state, principal, view)
        except GatewayError as exc:
            record.error_code = exc.code
            await exc.to_response()(scope, receive, send)
            return
        record.model = view.model  # a configured name: a bounded metrics label
        prefix = queue.route.prefix
        prefer = _preference(state.settings, scope, view, prefix)
        if prefer is not None and prefer.prefix is not None:
            record.prompt_blocks = len(prefer.prefix)
        lease = WorkerLease(
            queue, state.health, record, key=principal.name, prefer=prefer, priority=priority
        )
        config = state.config.model(view.model)
        engine_priority = priority if config and config.scheduling_policy == "priority" else None
        tag = prefer.tag if prefer is not None else None
        outbound = _outbound(view, reservation, tag, engine_priority)
        try:
            await Relay(state.relaying, lease, record, outbound)(scope, receive, send)
        finally:
            if reservation is not None:
                await settle(state.limiter, reservation, record)
            if prefix is not None and record.usage is not None:
                prefix.learn(record.prompt_blocks, record.usage.prompt)


def _queue_for(state: AppState, principal: Principal, model: str) -> ModelQueue:
    if state.registry.route(model) is None or not principal.may_use(model):
        raise ModelNotFound(model)
    return state.dispatcher.queue(model)


def _preference(
    settings: Settings, scope: Scope, view: RequestView, prefix: PrefixRouting | None
) -> Preference | None:
    """Session affinity (x-session-id, else the body's `user`), the prompt's blocks for
    cache-aware routing, and prompt-size steering."""
    session = None
    if settings.session_affinity:
        for name, value in scope["headers"]:
            if name == b"x-session-id":
                session = value.decode("latin-1")
                break
        else:
            user = view.doc.get("user")
            session = user if isinstance(user, str) and user else None
    bucket = None
    boundaries = settings.length_buckets_bytes
    if settings.length_steering:
        size = len(view.body)
        bucket = sum(1 for boundary in boundaries if size >= boundary)
    hashes = prefix.hashes(view) if prefix is not None else None
    if session is None and bucket is None and not hashes:
        return None
    tag = _tag(view) if prefix is not None and prefix.exact is not None and hashes else None
    return Preference(session, bucket, len(boundaries) + 1, hashes, tag)


def _tag(view: RequestView) -> str:
    """What marks the request on the worker's KV-cache events: vLLM's `session_id` (the
    client's own when it set one)."""
    client = view.doc.get("session_id")
    return client if isinstance(client, str) and client else "gw-" + os.urandom(8).hex()


async def _admit(state: AppState, principal: Principal, view: RequestView) -> Reservation | None:
    if state.keys is None:  # no keys: one anonymous caller, no limits, no usage per key
        return None
    reserve = reserve_tokens(view, state.settings.default_reserved_completion_tokens)
    return await state.limiter.admit(principal, reserve)


def _outbound(
    view: RequestView,
    reservation: Reservation | None,
    tag: str | None,
    priority: int | None = None,
) -> Outbound:
    headers = reservation.headers if reservation is not None else []
    tap = None
    body = view.body
    if view.stream:  # ask vLLM for the usage chunk (token counters); strip it if not asked
        tap = UsageTap(strip=not view.include_usage)
        body = body_asking_usage(view)
    if tag is not None:
        body = body_tagged(body, view, tag)
    if priority is not None:  # the model's workers schedule by vLLM's `priority`
        body = body_prioritized(body, view, priority)
    return Outbound(view.endpoint.path, body, view.stream, headers, tap)


def completion_routes() -> dict[str, CompletionRoute]:
    """Path -> handler, dispatched ahead of FastAPI by middleware.RequestContext."""
    return {endpoint.path: CompletionRoute(endpoint) for endpoint in Endpoint}
