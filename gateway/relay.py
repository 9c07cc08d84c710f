"""The exchange with a worker, run as the ASGI response so it can see the client leave.

Non-streaming answers are relayed whole; streams are relayed event by event. Until the first
byte is sent, failures become ordinary JSON errors with their status; after it, one SSE error
event and `[DONE]`. When the client goes away the upstream request is closed, so vLLM aborts it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway.accounting import UsageTap, usage_of_response
from gateway.deadline import MovingDeadline
from gateway.errors import GatewayError, UpstreamFailed, UpstreamTimeout, upstream_error_from_body
from gateway.routing.policy import pick
from gateway.streaming import SSEFramer, leading_error
from gateway.transport import chunk_reader
from gateway.upstream import translate
from gateway.validation import RequestView

if TYPE_CHECKING:
    from gateway.routing.registry import ModelRoute, Worker
    from gateway.state import AppState

log = logging.getLogger("gateway.relay")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientGone(Exception):
    """The client closed its connection; nothing more can be sent to it."""


@dataclass(slots=True)
class Outbound:
    """What goes to the worker and back beyond the relayed bytes, and the token accounting."""

    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # e.g. x-ratelimit-*
    tap: UsageTap | None = None  # streams of keys with a tokens-per-minute limit
    count_usage: bool = False  # non-streamed answers of such keys


class Relay:
    """ASGI app for one request: run it against a worker of `route` and answer the client.

    Afterwards `used_tokens` holds the worker's usage.total_tokens when it was counted.
    """

    def __init__(
        self,
        state: AppState,
        view: RequestView,
        route: ModelRoute,
        request_id: str,
        outbound: Outbound,
    ) -> None:
        self._state = state
        self._view = view
        self._route = route
        self._request_id = request_id
        self._out = outbound
        self.used_tokens: int | None = None
        self._finished = False
        self._client_gone = False
        self._send: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(self._watch_disconnect(receive, task))
        try:
            await self._exchange()
        except asyncio.CancelledError:
            if not self._client_gone:
                raise
            task.uncancel()
        except ClientGone:
            pass
        finally:
            watcher.cancel()
            if self._client_gone:
                scope.setdefault("state", {})["client_gone"] = True

    async def _watch_disconnect(self, receive: Receive, task: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not self._finished:
                    self._client_gone = True
                    task.cancel()
                return

    async def _exchange(self) -> None:
        worker = pick(self._route)
        worker.inflight += 1
        try:
            if self._view.stream:
                await self._relay_stream(worker)
            else:
                await self._relay_unary(worker)
        except GatewayError as exc:
            log.log(
                exc.log_level,
                "request %s failed before the answer started: %s (%s)",
                self._request_id,
                exc.code,
                worker.name,
            )
            await self._send_error(exc)
        finally:
            worker.inflight -= 1

    async def _relay_unary(self, worker: Worker) -> None:
        settings = self._state.settings
        try:
            async with asyncio.timeout(settings.total_timeout):
                response = await self._state.upstream.open(
                    worker, self._view.endpoint.value, self._out.body, self._request_id
                )
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            raise UpstreamTimeout(
                f"worker {worker.name} did not answer within {settings.total_timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise translate(exc, worker) from None
        if response.status_code != 200:
            raise upstream_error_from_body(response.status_code, body)
        if self._out.count_usage:
            self.used_tokens = usage_of_response(body)
        content_type = response.headers.get("content-type", "application/json").encode()
        await self._start(200, [(b"content-type", content_type)], len(body))
        await self._body(body, final=True)

    async def _relay_stream(self, worker: Worker) -> None:
        settings = self._state.settings
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + settings.total_timeout
        first_deadline = min(loop.time() + settings.first_byte_timeout, total_deadline)
        response: httpx.Response | None = None
        framer = SSEFramer()
        committed = False
        try:
            async with MovingDeadline(first_deadline) as deadline:
                response = await self._state.upstream.open(
                    worker, self._view.endpoint.value, self._out.body, self._request_id
                )
                if response.status_code != 200:
                    raise upstream_error_from_body(response.status_code, await response.aread())
                read = chunk_reader(response)
                events = b""
                while not events:
                    chunk = await read()
                    if not chunk:
                        raise UpstreamFailed(
                            f"worker {worker.name} ended the stream before its first event"
                        )
                    events = framer.feed(chunk)
                error = leading_error(events)
                if error is not None:  # the worker failed before its first token
                    raise upstream_error_from_body(_status_of(error), error)
                await self._start(200, _SSE_HEADERS, None)
                committed = True
                tap = self._out.tap
                await self._body(tap.feed(events) if tap else events)
                deadline.at = min(loop.time() + settings.idle_timeout, total_deadline)
                while chunk := await read():
                    events = framer.feed(chunk)
                    if events:
                        await self._body(tap.feed(events) if tap else events)
                    deadline.at = min(loop.time() + settings.idle_timeout, total_deadline)
                if tap is not None:
                    self.used_tokens = tap.used
            if not framer.done:
                raise UpstreamFailed(f"worker {worker.name} ended the stream before it finished")
            await self._body(b"", final=True)
        except (TimeoutError, httpx.HTTPError, GatewayError) as exc:
            failure = _stream_failure(exc, worker, committed, settings.idle_timeout)
            if not committed:
                raise failure from None
            log.log(
                failure.log_level,
                "request %s: stream broken after start: %s (%s)",
                self._request_id,
                failure.code,
                worker.name,
            )
            await self._body(failure.sse_event(), final=True)
        finally:
            if response is not None:
                await response.aclose()

    async def _start(
        self, status: int, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> None:
        headers = [*headers, *self._out.headers]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        await self._emit({"type": "http.response.start", "status": status, "headers": headers})

    async def _body(self, body: bytes, *, final: bool = False) -> None:
        if final:
            self._finished = True
        await self._emit({"type": "http.response.body", "body": body, "more_body": not final})

    async def _emit(self, message: Message) -> None:
        assert self._send is not None
        try:
            await self._send(message)
        except OSError as exc:
            self._client_gone = True
            raise ClientGone from exc

    async def _send_error(self, exc: GatewayError) -> None:
        body = exc.body()
        headers = [(b"content-type", b"application/json")]
        headers += [(k.encode(), v.encode()) for k, v in exc.headers.items()]
        await self._start(exc.status, headers, len(body))
        await self._body(body, final=True)


def _status_of(error_json: bytes) -> int:
    """vLLM puts the HTTP status in the in-band error's integer `code`."""
    try:
        code = orjson.loads(error_json)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return 500
    return code if isinstance(code, int) and 400 <= code <= 599 else 500


def _stream_failure(
    exc: BaseException, worker: Worker, committed: bool, idle: float
) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, TimeoutError):
        what = f"no data for {idle:g}s" if committed else "no first token in time"
        return UpstreamTimeout(f"worker {worker.name} stalled: {what}")
    assert isinstance(exc, httpx.HTTPError)
    return translate(exc, worker)
