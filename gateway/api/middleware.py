"""The outermost ASGI layer: a record and an id for every request, the hot routes dispatched
directly, and, once the request has ended, its record handed to the observers (metrics,
tracing, the access line)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, InternalError, MethodNotAllowed
from gateway.observe.logs import AccessSink, access_fields
from gateway.observe.metrics import Metrics
from gateway.observe.tracing import RequestSpan, Tracing
from gateway.record import RequestRecord
from gateway.request import KNOWN_PATHS, OPS_PATHS, RESPONSES_PREFIX, Endpoint, response_path

log = logging.getLogger("gateway")

_CLIENT_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


class HotRoute(Protocol):
    """A model-addressed endpoint, called with the request's record instead of through
    FastAPI."""

    endpoint: Endpoint
    methods: frozenset[str]

    async def __call__(
        self, record: RequestRecord, scope: Scope, receive: Receive, send: Send
    ) -> None: ...


def request_id_from(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's X-Request-Id when it is a sane token, else a fresh random one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _CLIENT_REQUEST_ID.fullmatch(value):
                return value
            break
    return os.urandom(16).hex().encode()


class RequestContext:
    """Requests to the endpoint table's paths go straight to their handler, skipping the
    FastAPI middleware stack and router (measured in bench/RESULTS.md); everything else goes
    to `app`."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        hot_routes: Mapping[str, HotRoute],
        *,
        tracing: Tracing | None,
        access: AccessSink | None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.hot_routes = hot_routes
        self.tracing = tracing  # None: no spans
        self.access = access  # None: no access lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope["headers"])
        path = scope["path"]
        hot = self.hot_routes.get(path)
        if hot is None and path.startswith(RESPONSES_PREFIX):
            hot = self._by_id(path)
        label = path if path in KNOWN_PATHS else "other"
        if hot is not None:
            label = hot.endpoint.path  # /v1/responses/{id}, not each id
        record = RequestRecord.start(request_id.decode(), scope["method"], label)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
            await send(message)

        span = self._span(scope, hot, record)
        try:
            if hot is None:
                await self.app(scope, receive, send_with_id)
            else:
                await self._hot(hot, record, scope, receive, send_with_id)
        finally:
            self._observe(record, span, path)

    def _by_id(self, path: str) -> HotRoute | None:
        """/v1/responses/{id} and .../cancel: the table's row for the path's shape."""
        found = response_path(path)
        return self.hot_routes.get(found[0].path) if found is not None else None

    def _span(
        self, scope: Scope, hot: HotRoute | None, record: RequestRecord
    ) -> RequestSpan | None:
        if self.tracing is None or hot is None or scope["method"] not in hot.methods:
            return None
        span = self.tracing.start(scope["headers"], hot.endpoint.operation)
        record.trace_headers = span.traceparent()
        return span

    async def _hot(
        self, hot: HotRoute, record: RequestRecord, scope: Scope, receive: Receive, send: Send
    ) -> None:
        dialect = hot.endpoint.spec.dialect
        if scope["method"] not in hot.methods:
            error: GatewayError = MethodNotAllowed(
                f"Method {scope['method']} is not allowed on {scope['path']}"
            )
            allow = {"allow": ", ".join(sorted(hot.methods))}
            record.error_code = error.code
            await error.to_response(allow, dialect)(scope, receive, send)
            return
        try:
            await hot(record, scope, receive, send)
        except Exception:
            if record.status:
                raise
            # A bug on the hot path still answers in the envelope, never with a bare 500.
            log.exception("unhandled error on %s", scope["path"])
            error = InternalError("The gateway failed to handle the request.")
            record.error_code = error.code
            await error.to_response(dialect=dialect)(scope, receive, send)

    def _observe(self, record: RequestRecord, span: RequestSpan | None, path: str) -> None:
        record.finish()
        self.metrics.observe(record)
        if span is not None:
            span.finish(record)
        # Probes and scrapes arrive every few seconds: counted, not written to the log.
        if self.access is not None and path not in OPS_PATHS:
            self.access(access_fields(record))
