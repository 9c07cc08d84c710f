"""The OpenAI API: /v1/chat/completions, /v1/completions (raw ASGI), /v1/models.

The two completion routes are the hot path, so they are plain ASGI endpoints: no FastAPI
request parsing or dependency solving per request, only what the gateway needs.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.api.deps import State
from gateway.errors import GatewayError, ModelNotFound, PayloadTooLarge
from gateway.relay import Relay
from gateway.state import AppState
from gateway.validation import Endpoint, parse_request

router = APIRouter()


@router.get("/v1/models", response_model=None)
async def list_models(state: State) -> Response:
    return Response(state.models_body, media_type="application/json")


class CompletionRoute:
    """POST handler for one completion endpoint: read, validate, route, relay."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: AppState = scope["app"].state.gateway
        try:
            body = await read_body(scope, receive, state.settings.max_body_bytes)
            view = parse_request(self.endpoint, body)
            route = state.registry.route(view.model)
            if route is None:
                raise ModelNotFound(view.model)
        except GatewayError as exc:
            await exc.to_response()(scope, receive, send)
            return
        request_state = scope["state"]
        request_state["model"] = route.name  # a configured name: a bounded metrics label
        await Relay(state, view, route, request_state["request_id"])(scope, receive, send)


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
