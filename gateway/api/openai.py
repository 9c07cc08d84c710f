"""The OpenAI API: /v1/chat/completions, /v1/completions (raw ASGI), /v1/models.

The two completion routes are the hot path, so they are plain ASGI endpoints: no FastAPI
request parsing or dependency solving per request, only what the gateway needs.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.accounting import UsageTap, body_asking_usage, reserve_tokens
from gateway.admission import ModelQueue
from gateway.api.deps import State
from gateway.auth import authenticate
from gateway.errors import GatewayError, ModelNotFound, PayloadTooLarge
from gateway.keys import Principal
from gateway.ratelimit import Admission
from gateway.relay import Outbound, Relay
from gateway.routing.policy import Preference
from gateway.settings import Settings
from gateway.state import AppState
from gateway.tracing import RequestSpan
from gateway.validation import Endpoint, RequestView, parse_request

router = APIRouter()


@router.get("/v1/models", response_model=None)
async def list_models(request: Request, state: State) -> Response:
    principal = authenticate(request.scope["headers"], state.keys)
    if principal.models is None:
        return Response(state.models_body, media_type="application/json")
    doc = orjson.loads(state.models_body)
    doc["data"] = [m for m in doc["data"] if m["id"] in principal.models]
    return Response(orjson.dumps(doc), media_type="application/json")


class CompletionRoute:
    """POST handler for one completion endpoint: authenticate, validate, route, limit, relay."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: AppState = scope["app"].state.gateway
        request_state = scope["state"]
        span = state.tracing.start(scope["headers"], self.endpoint) if state.tracing else None
        try:
            principal = authenticate(scope["headers"], state.keys)
            request_state["key"] = principal.name
            body = await read_body(scope, receive, state.settings.max_body_bytes)
            view = parse_request(self.endpoint, body)
            if span is not None:
                span.request(view)
            queue = _queue_for(state, principal, view.model)
            admission = await _admit(state, principal, view)
        except GatewayError as exc:
            if span is not None:
                span.finish(exc.status, exc.code, None)
            await exc.to_response()(scope, receive, send)
            return
        except BaseException:
            if span is not None:
                span.finish(500, "internal_error", None)
            raise
        request_state["model"] = view.model  # a configured name: a bounded metrics label
        relay = Relay(
            state,
            view,
            queue,
            request_state["request_id"],
            _outbound(view, admission, span),
            key=principal.name,
            prefer=_preference(state.settings, scope, view),
            started=request_state["started"],
        )
        try:
            await relay(scope, receive, send)
        finally:
            request_state["relay"] = relay
            state.metrics.observe_relay(view.model, relay.timing, relay.usage)
            if span is not None:
                gone = request_state.get("client_gone", False)
                span.finish(499 if gone else relay.status or 500, relay.error_code, relay)
            if admission is not None:
                await state.limiter.settle(admission, _used_tokens(relay))


def _used_tokens(relay: Relay) -> int | None:
    """What the request used: the worker's report; nothing when it never reached a worker
    (refused by our own queue); None (settle on the reservation) when the report is missing."""
    if relay.usage is not None:
        return relay.usage.total
    return 0 if relay.worker is None else None


def _queue_for(state: AppState, principal: Principal, model: str) -> ModelQueue:
    if state.registry.route(model) is None or not principal.may_use(model):
        raise ModelNotFound(model)
    return state.dispatcher.queue(model)


def _preference(settings: Settings, scope: Scope, view: RequestView) -> Preference | None:
    """Session affinity (x-session-id, else the body's `user`) and prompt-size steering."""
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
    if session is None and bucket is None:
        return None
    return Preference(session=session, length_bucket=bucket, buckets=len(boundaries) + 1)


async def _admit(state: AppState, principal: Principal, view: RequestView) -> Admission | None:
    if not principal.limited:
        return None
    reserve = reserve_tokens(view, state.settings.default_reserved_completion_tokens)
    return await state.limiter.admit(principal, reserve)


def _outbound(view: RequestView, admission: Admission | None, span: RequestSpan | None) -> Outbound:
    headers = admission.headers if admission is not None else []
    upstream_headers = span.traceparent() if span is not None else []
    if view.stream:  # ask vLLM for the usage chunk (token counters); strip it if not asked
        tap = UsageTap(strip=not view.include_usage)
        return Outbound(body_asking_usage(view), headers, tap, upstream_headers)
    return Outbound(view.body, headers, None, upstream_headers)


def completion_routes() -> dict[str, CompletionRoute]:
    """Path -> ASGI endpoint, dispatched ahead of FastAPI by middleware.RequestContext."""
    return {endpoint.value: CompletionRoute(endpoint) for endpoint in Endpoint}


def add_completion_routes(app: FastAPI, routes: dict[str, CompletionRoute]) -> None:
    """Register them with FastAPI's router too, so a wrong method gets its 405."""
    for path, endpoint in routes.items():
        app.router.routes.append(Route(path, endpoint, methods=["POST"]))


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, refusing more than `limit` bytes before buffering them."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left while sending
            return b""
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
