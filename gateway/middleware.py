"""Pure ASGI middleware: request id in and out, and the request counter and latency histogram."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InternalError
from gateway.metrics import Metrics

log = logging.getLogger("gateway")

_KNOWN_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready", "/metrics"}
)
_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-Id when it is a sane token, else a fresh random one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _CLIENT_REQUEST_ID.fullmatch(value):
                return value
            break
    return os.urandom(16).hex().encode()


class RequestContext:
    """Outermost layer: request id and metrics for every request, and the hot path.

    POSTs to the completion routes go straight to their ASGI endpoint, skipping the FastAPI
    middleware stack and router (measured in bench/RESULTS.md); everything else goes to `app`.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, hot_routes: Mapping[str, ASGIApp]) -> None:
        self.app = app
        self.metrics = metrics
        self.hot_routes = hot_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id.decode()
        state["started"] = started
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        path = scope["path"]
        hot = self.hot_routes.get(path) if scope["method"] == "POST" else None
        try:
            if hot is None:
                await self.app(scope, receive, send_with_id)
            else:
                await hot(scope, receive, send_with_id)
        except Exception:
            if hot is None or status:
                raise
            # A bug on the hot path still answers in the envelope, never with a bare 500.
            log.exception("unhandled error on %s", path)
            await InternalError("The gateway failed to handle the request.").to_response()(
                scope, receive, send_with_id
            )
        finally:
            relay = state.get("relay")
            self.metrics.observe_request(
                state.get("model", "-"),
                path if path in _KNOWN_ENDPOINTS else "other",
                499 if state.get("client_gone") else status or 500,
                time.perf_counter() - started,
                relay.timing if relay is not None else None,
            )
