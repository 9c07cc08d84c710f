"""Pure ASGI middleware: request id in and out, the request metrics, and the access line."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import InternalError
from gateway.logs import AccessSink
from gateway.metrics import Metrics

log = logging.getLogger("gateway")

_KNOWN_ENDPOINTS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready", "/metrics"}
)
# Probes and scrapes arrive every few seconds: counted in the metrics, not written to the log.
_NOT_LOGGED = frozenset({"/health", "/ready", "/metrics"})
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

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        hot_routes: Mapping[str, ASGIApp],
        *,
        access: AccessSink | None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.hot_routes = hot_routes
        self.access = access  # None: no access lines

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
            endpoint = path if path in _KNOWN_ENDPOINTS else "other"
            status = 499 if state.get("client_gone") else status or 500
            seconds = time.perf_counter() - started
            timing = relay.timing if relay is not None else None
            model = state.get("model", "-")
            self.metrics.observe_request(model, endpoint, status, seconds, timing)
            if self.access is not None and path not in _NOT_LOGGED:
                self.access(_access_fields(state, scope["method"], endpoint, status, seconds))


def _access_fields(
    state: dict[str, Any], method: str, endpoint: str, status: int, seconds: float
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": state["request_id"],
        "method": method,
        "endpoint": endpoint,
        "status": status,
        "duration_ms": round(seconds * 1000, 3),
        "key": state.get("key"),  # the key's name from the keys file, never the key
        "model": state.get("model"),
    }
    relay = state.get("relay")
    if relay is not None:
        timing = relay.timing
        fields["worker"] = relay.worker
        fields["queue_ms"] = round(timing.queued * 1000, 3)
        if timing.first_event is not None:
            fields["ttft_ms"] = round((timing.first_event - timing.started) * 1000, 3)
        if relay.usage is not None:
            fields["prompt_tokens"] = relay.usage.prompt
            fields["completion_tokens"] = relay.usage.completion
    return fields
