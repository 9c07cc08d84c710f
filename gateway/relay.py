"""The exchange with a worker, run as the ASGI response so it can see the client leave.

Non-streaming answers are relayed whole; streams are relayed event by event. Until the first
byte is sent, failures become ordinary JSON errors with their status; after it, one SSE error
event and `[DONE]`. When the client goes away the upstream request is closed, so vLLM aborts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
import orjson
from starlette.types import Message, Receive, Scope, Send

from gateway.accounting import Usage, UsageTap, usage_of_response
from gateway.deadline import MovingDeadline
from gateway.errors import GatewayError, UpstreamFailed, UpstreamTimeout, upstream_error_from_body
from gateway.streaming import SSEFramer, leading_error
from gateway.transport import ChunkReader, chunk_reader
from gateway.upstream import translate
from gateway.validation import RequestView

if TYPE_CHECKING:
    from gateway.admission import ModelQueue
    from gateway.routing.policy import Preference
    from gateway.routing.registry import Worker
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
    """What goes to the worker and back beyond the relayed bytes."""

    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # e.g. x-ratelimit-*
    tap: UsageTap | None = None  # streams: finds (and maybe strips) vLLM's usage chunk
    upstream_headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # traceparent


@dataclass(slots=True)
class Timing:
    """Where the request's time went (perf_counter seconds), for metrics and the access log."""

    started: float
    queued: float = 0.0  # waiting in the admission queue
    upstream: float = 0.0  # waiting on the worker: connect + answer, or every read of a stream
    first_event: float | None = None  # when a stream's first event went to the client
    last_event: float = 0.0
    events: int = 0  # stream writes to the client


class Relay:
    """ASGI app for one request: take a worker of the model (maybe after queueing), run the
    request against it (maybe retried on another) and answer the client.

    Afterwards `usage` holds the worker's usage report when there was one, `worker` the name
    of the worker that answered, `timing` where the time went.
    """

    def __init__(
        self,
        state: AppState,
        view: RequestView,
        queue: ModelQueue,
        request_id: str,
        outbound: Outbound,
        *,
        key: str,
        prefer: Preference | None,
        started: float,
    ) -> None:
        self._state = state
        self._view = view
        self._queue = queue
        self._request_id = request_id
        self._out = outbound
        self._key = key
        self._prefer = prefer
        self.usage: Usage | None = None
        self.worker: str | None = None
        self.status: int | None = None  # of the answer the client got
        self.error_code: str | None = None  # when it was an error, even one sent mid-stream
        self.timing = Timing(started)
        self._finished = False
        self._client_gone = False
        self._send: Send | None = None
        self._tried: set[Worker] = set()
        self._response: httpx.Response | None = None

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
        queued_at = time.perf_counter()
        try:
            worker = await self._queue.acquire(self._key, self._prefer)
        except GatewayError as exc:  # queue full, waited too long, or no healthy worker
            await self._send_error(exc)
            return
        self.timing.queued = time.perf_counter() - queued_at
        self._tried.add(worker)
        self._worker = worker
        fault: str | None = None
        answered = False  # False: the client left, which says nothing about the worker
        try:
            if self._view.stream:
                fault = await self._relay_stream()
            else:
                await self._relay_unary()
            answered = True
        except GatewayError as exc:
            fault, answered = exc.worker_fault, True
            log.log(
                exc.log_level,
                "request %s failed before the answer started: %s (%s)",
                self._request_id,
                exc.code,
                self._worker.name,
            )
            await self._send_error(exc)
        finally:
            worker = self._worker
            self.worker = worker.name
            if answered:
                health = self._state.health
                health.failed(worker, fault) if fault else health.succeeded(worker)
            self._queue.release(worker)

    def _switch(self, failed: Worker, error: GatewayError) -> Worker | None:
        """Retry hook (upstream.open_retrying): take another worker, counting the failure.
        None: no other worker; the error then ends the request, and is counted there."""
        replacement = self._queue.take_another(frozenset(self._tried))
        if replacement is None:
            return None
        self._state.health.failed(failed, error.worker_fault or "failed")
        self._queue.release(failed)
        self._tried.add(replacement)
        self._worker = replacement
        self._state.metrics.upstream_retries.labels(failed.model).inc()
        log.info(
            "request %s: %s from %s, trying %s",
            self._request_id,
            error.code,
            failed.name,
            replacement.name,
        )
        return replacement

    async def _open(self) -> httpx.Response:
        return await self._state.upstream.open_retrying(
            self._worker,
            self._switch,
            self._view.endpoint.value,
            self._out.body,
            self._request_id,
            extra_headers=self._out.upstream_headers,
        )

    async def _relay_unary(self) -> None:
        settings = self._state.settings
        sent_at = time.perf_counter()
        try:
            async with asyncio.timeout(settings.total_timeout):
                response = await self._open()
                try:
                    body = await response.aread()
                finally:
                    await response.aclose()
        except TimeoutError:
            raise UpstreamTimeout(
                f"worker {self._worker.name} did not answer within {settings.total_timeout:g}s"
            ) from None
        except httpx.HTTPError as exc:
            raise translate(exc, self._worker) from None
        finally:
            self.timing.upstream = time.perf_counter() - sent_at
        if response.status_code != 200:
            raise upstream_error_from_body(response.status_code, body)
        self.usage = usage_of_response(body)
        content_type = response.headers.get("content-type", "application/json").encode()
        await self._start(200, [(b"content-type", content_type)], len(body))
        await self._body(body, final=True)

    async def _relay_stream(self) -> str | None:
        """Relay the stream; returns the worker's fault when it broke after the answer began."""
        settings = self._state.settings
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + settings.total_timeout
        first_deadline = min(loop.time() + settings.first_byte_timeout, total_deadline)
        framer = SSEFramer()
        committed = False
        try:
            async with MovingDeadline(first_deadline) as deadline:
                read, events = await self._first_events(framer)
                await self._start(200, _SSE_HEADERS, None)
                committed = True
                await self._event(events)
                while True:
                    deadline.at = min(loop.time() + settings.idle_timeout, total_deadline)
                    waiting_since = time.perf_counter()
                    chunk = await read()
                    self.timing.upstream += time.perf_counter() - waiting_since
                    if not chunk:
                        break
                    events = framer.feed(chunk)
                    if events:
                        await self._event(events)
            if not framer.done:
                raise UpstreamFailed(
                    f"worker {self._worker.name} ended the stream before it finished"
                )
            await self._body(b"", final=True)
            return None
        except (TimeoutError, httpx.HTTPError, GatewayError) as exc:
            failure = _stream_failure(exc, self._worker, committed, settings.idle_timeout)
            if not committed:
                raise failure from None
            log.log(
                failure.log_level,
                "request %s: stream broken after start: %s (%s)",
                self._request_id,
                failure.code,
                self._worker.name,
            )
            self.error_code = failure.code
            await self._body(failure.sse_event(), final=True)
            return failure.worker_fault
        finally:
            if self._out.tap is not None:
                self.usage = self._out.tap.usage
            if self._response is not None:
                await self._response.aclose()

    async def _first_events(self, framer: SSEFramer) -> tuple[ChunkReader, bytes]:
        """Open the stream and read up to its first whole event(s); nothing is sent yet, so
        anything going wrong here is still an ordinary error with its status."""
        waiting_since = time.perf_counter()
        try:
            self._response = response = await self._open()
            if response.status_code != 200:
                raise upstream_error_from_body(response.status_code, await response.aread())
            read = chunk_reader(response)
            events = b""
            while not events:
                chunk = await read()
                if not chunk:
                    raise UpstreamFailed(
                        f"worker {self._worker.name} ended the stream before its first event"
                    )
                events = framer.feed(chunk)
        finally:
            self.timing.upstream += time.perf_counter() - waiting_since
        error = leading_error(events)
        if error is not None:  # the worker failed before its first token
            raise upstream_error_from_body(_status_of(error), error)
        return read, events

    async def _event(self, events: bytes) -> None:
        """Send events to the client, noting when (for time to first token and token gaps)."""
        tap = self._out.tap
        await self._body(tap.feed(events) if tap else events)
        now = time.perf_counter()
        timing = self.timing
        if timing.first_event is None:
            timing.first_event = now
        timing.last_event = now
        timing.events += 1

    async def _start(
        self, status: int, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> None:
        self.status = status
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
        self.error_code = exc.code
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
