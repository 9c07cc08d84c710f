"""The exchange with a worker, run as the ASGI response so it can see the client leave.

Non-streaming answers are relayed whole; streams event by event (after the first event, from the
worker connection's read callback: relay/pump.py). Until the first
byte is sent, failures become ordinary JSON errors with their status; after it, one SSE error
event and `[DONE]`. When the client goes away the upstream request is closed, so vLLM aborts it.
A request sent before its limits decision (Outbound.admission) waits for it before the first
byte, and is cut off the same way when it is refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from starlette.types import Receive, Scope, Send

from gateway.errors import (
    Dialect,
    GatewayError,
    ShuttingDown,
    UpstreamFailed,
    UpstreamInvalid,
    UpstreamTimeout,
    upstream_error_from_body,
)
from gateway.record import RequestRecord
from gateway.relay.client import ClientLink, ClientWriter, client_link
from gateway.relay.deadline import MovingDeadline
from gateway.relay.disconnect import ClientGone, DisconnectWatch
from gateway.relay.lease import WorkerLease
from gateway.relay.pump import StreamPump
from gateway.relay.sse import SSEFramer, leading_error
from gateway.relay.upstream import Upstream, UpstreamRequest, UpstreamResponse
from gateway.relay.usage import NamedUsageTap, UsageTap, usage_of_answer
from gateway.server.drain import Drain

log = logging.getLogger("gateway.relay")

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(frozen=True, slots=True)
class Bounds:
    """What bounds an exchange. Seconds: streams get `first_byte` for their first event, then
    `idle` between events, all under `total`; a non-streaming answer arrives whole within
    `total`. Bytes: a non-streaming answer, one stream event. A client that reads nothing for
    `client_write` seconds is dropped."""

    first_byte: float
    idle: float
    total: float
    max_response_bytes: int = 64 << 20
    max_event_bytes: int = 1 << 20
    client_write: float = 30.0


@dataclass(frozen=True, slots=True)
class Relaying:
    """What every relay shares: the client towards workers, the bounds, the shutdown drain."""

    upstream: Upstream
    bounds: Bounds
    drain: Drain


@dataclass(slots=True)
class Outbound:
    """What goes to the worker, and what goes back beyond the relayed bytes."""

    path: str
    body: bytes
    stream: bool
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # to the client
    tap: UsageTap | NamedUsageTap | None = None  # streams: finds vLLM's usage report
    method: str = "POST"
    content_type: str = "application/json"
    dialect: Dialect = "openai"  # the envelope of the gateway's own errors
    named: bool = False  # a stream of named events (Responses, Anthropic): no [DONE]
    usage: bool = True  # read `usage` from the answer (else it is relayed unread: e.g. text)
    # Responses API: called with the id of the response the worker made (before the client
    # sees it), so later requests about it find this worker.
    remember: Callable[[str], Awaitable[None]] | None = None
    # The request's limits decision when it went to the worker before it (limits/headroom.py):
    # resolves to the x-ratelimit headers, or raises the refusal. Awaited before the client's
    # answer starts; a refusal arriving earlier cuts the worker's request off.
    admission: asyncio.Future[list[tuple[bytes, bytes]]] | None = None


class Relay:
    """ASGI app for one request: take a worker of the model (maybe after queueing), run the
    request against it (maybe retried on another) and answer the client, filling the record
    (worker, usage, timing, error code, whether the client left)."""

    def __init__(
        self, relaying: Relaying, lease: WorkerLease, record: RequestRecord, outbound: Outbound
    ) -> None:
        self._upstream = relaying.upstream
        self._bounds = relaying.bounds
        self._drain = relaying.drain
        self._lease = lease
        self._record = record
        self._out = outbound
        self._client: ClientWriter | None = None
        self._response: UpstreamResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._interruption: GatewayError | None = None  # why the relay was cut short
        self._gated = outbound.admission is None  # True: no limits decision left to wait for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._task = asyncio.current_task()
        self._record.relayed = True
        link = client_link(scope)
        watch = DisconnectWatch(receive, link)
        self._client = ClientWriter(
            send,
            link,
            self._bounds.client_write,
            self._record,
            watch,
            self._out.headers,
        )
        self._drain.track(self)
        admission = self._out.admission
        if admission is not None:
            admission.add_done_callback(self._decided)
        try:
            async with watch:
                await self._exchange()
        except asyncio.CancelledError:
            if self._interruption is None or self._task is None:
                raise
            self._task.uncancel()
            await self._end_interrupted(self._interruption)
        finally:
            self._gated = True  # a decision arriving from now on cuts nothing off
            if admission is not None:
                admission.remove_done_callback(self._decided)
            self._drain.untrack(self)
            self._record.client_gone = watch.gone

    def interrupt(self) -> None:
        """The drain's deadline passed: stop relaying (see _end_interrupted)."""
        self._cut(ShuttingDown("The gateway is shutting down; retry the request."))

    def _cut(self, reason: GatewayError) -> None:
        if self._task is not None and self._interruption is None:
            self._interruption = reason
            self._task.cancel()

    def _decided(self, admission: asyncio.Future[list[tuple[bytes, bytes]]]) -> None:
        """The limits decision of a request sent early came in while the worker was at it:
        a refusal cuts the worker's request off (vLLM aborts it) and answers the client."""
        if self._gated or admission.cancelled():
            return
        refusal = admission.exception()
        if isinstance(refusal, GatewayError):
            self._cut(refusal)

    async def _pass_gate(self) -> None:
        """Before the client's answer starts: the limits decision, if the request went to its
        worker before it. Raises the refusal; else adds the x-ratelimit headers."""
        if self._gated:
            return
        self._gated = True
        admission = self._out.admission
        assert admission is not None
        if admission.done():  # usually: Redis answered while the worker worked
            self._out.headers.extend(admission.result())
        else:  # (a cancel of the relay, the client leaving, must not cancel the decision)
            self._out.headers.extend(await asyncio.shield(admission))

    async def _end_interrupted(self, error: GatewayError) -> None:
        """Tell the client why the relay was cut short (the gateway shutting down, or the
        request refused by its limits after it went to the worker): an error event and [DONE]
        after a stream's start, else the error as the answer. The worker is not blamed."""
        client = self._writer
        self._record.error_code = error.code
        try:
            async with asyncio.timeout(1.0):
                if client.started:
                    await client.body(self._stream_error(error), final=True)
                else:
                    await client.error(error, self._out.dialect)
        except (TimeoutError, ClientGone):
            pass

    @property
    def _writer(self) -> ClientWriter:
        assert self._client is not None
        return self._client

    async def _exchange(self) -> None:
        try:
            await self._lease.acquire()
        except GatewayError as exc:  # queue full, waited too long, or no healthy worker
            await self._send_error(exc)
            return
        fault: str | None = None
        answered = False  # False: the client left, which says nothing about the worker
        try:
            if self._out.stream:
                fault = await self._relay_stream()
            else:
                await self._relay_unary()
            answered = True
        except GatewayError as exc:
            fault, answered = exc.worker_fault, True
            log.log(
                exc.log_level,
                "request %s failed before the answer started: %s (%s)",
                self._record.request_id,
                exc.code,
                self._worker_name,
            )
            await self._send_error(exc)
        finally:
            self._lease.release(answered=answered, fault=fault)

    @property
    def _worker_name(self) -> str:
        worker = self._lease.worker
        return worker.name if worker is not None else "-"

    async def _open(self) -> UpstreamResponse:
        worker = self._lease.worker
        assert worker is not None
        out = self._out
        request = UpstreamRequest(
            out.path,
            out.body,
            self._record.request_id,
            self._record.trace_headers,
            out.method,
            out.content_type,
        )
        return await self._upstream.open_retrying(worker, self._lease.switch, request)

    async def _relay_unary(self) -> None:
        total = self._bounds.total
        sent_at = time.perf_counter()
        try:
            async with asyncio.timeout(total):
                response = await self._open()
                try:
                    body = await response.read(self._bounds.max_response_bytes)
                finally:
                    response.close()
        except TimeoutError:
            raise UpstreamTimeout(
                f"worker {self._worker_name} did not answer within {total:g}s"
            ) from None
        finally:
            self._record.timing.upstream = time.perf_counter() - sent_at
        if response.status != 200:
            raise upstream_error_from_body(response.status, body)
        await self._pass_gate()
        if self._out.usage:
            self._record.usage = usage_of_answer(body)  # UpstreamInvalid: not a JSON object
        if self._out.remember is not None:
            await _remember_id(self._out.remember, body)
        await self._writer.start(
            200, [(b"content-type", response.content_type.encode())], len(body)
        )
        await self._writer.body(body, final=True)

    async def _relay_stream(self) -> str | None:
        """Relay the stream; returns the worker's fault when it broke after the answer began."""
        loop = asyncio.get_running_loop()
        total_deadline = loop.time() + self._bounds.total
        first_deadline = min(loop.time() + self._bounds.first_byte, total_deadline)
        framer = SSEFramer(self._bounds.max_event_bytes, ends_at_eof=self._out.named)
        committed = False
        try:
            async with MovingDeadline(first_deadline) as deadline:
                response, events = await self._first_events(framer)
                if not self._gated:
                    deadline.at = total_deadline  # waiting for Redis is not the worker's silence
                    await self._pass_gate()
                if self._out.remember is not None:
                    await _remember_id(self._out.remember, events)
                await self._writer.start(200, _SSE_HEADERS, None)
                committed = True
                await self._event(events)
                await self._relay_events(response, framer, deadline, total_deadline)
            if not framer.done:
                raise UpstreamFailed(
                    f"worker {self._worker_name} ended the stream before it finished"
                )
            await self._writer.body(b"", final=True)
            return None
        except (TimeoutError, GatewayError) as exc:
            return await self._stream_broken(exc, committed)
        finally:
            if self._out.tap is not None:
                self._record.usage = self._out.tap.usage
            if self._response is not None:
                self._response.close()

    async def _relay_events(
        self,
        response: UpstreamResponse,
        framer: SSEFramer,
        deadline: MovingDeadline,
        total_deadline: float,
    ) -> None:
        """The stream after its first event, until the worker ends it: pushed from the worker
        connection's reads when the server offers the client's connection, else read here."""
        # From here the idle deadline holds, which may be shorter than the first-byte one.
        deadline.at = min(asyncio.get_running_loop().time() + self._bounds.idle, total_deadline)
        deadline.rearm()
        link = self._writer.chunk_link()
        if link is not None:
            await self._pump_events(response, link, framer, deadline, total_deadline)
            return
        loop = asyncio.get_running_loop()
        idle = self._bounds.idle
        timing = self._record.timing
        read = response.read_chunk
        while True:
            deadline.at = min(loop.time() + idle, total_deadline)
            waiting_since = time.perf_counter()
            chunk = await read()
            timing.upstream += time.perf_counter() - waiting_since
            if not chunk:
                return
            events = framer.feed(chunk)
            if events:
                await self._event(events)

    async def _pump_events(
        self,
        response: UpstreamResponse,
        link: ClientLink,
        framer: SSEFramer,
        deadline: MovingDeadline,
        total_deadline: float,
    ) -> None:
        timing = self._record.timing
        loop = asyncio.get_running_loop()
        pump = StreamPump(
            response,
            link,
            framer,
            self._out.tap,
            timing,
            deadline,
            self._bounds.idle,
            total_deadline,
        )
        started, drained = time.perf_counter(), 0.0
        response.push(pump.chunk, pump.ended)
        try:
            while not pump.finished:
                await pump.wait()
                if pump.paused:
                    # Waiting on the client, not the worker: the write deadline bounds it.
                    deadline.at = total_deadline
                    since = time.perf_counter()
                    try:
                        await self._writer.drain()
                    finally:
                        drained += time.perf_counter() - since
                    deadline.at = min(loop.time() + self._bounds.idle, total_deadline)
                    deadline.rearm()
                    pump.resume()
        finally:
            ended = pump.ended_at or time.perf_counter()
            timing.upstream += max(ended - started - pump.busy - drained, 0.0)
            pump.detach()  # e.g. before a stalled stream's error event: nothing after it
        pump.result()

    async def _first_events(self, framer: SSEFramer) -> tuple[UpstreamResponse, bytes]:
        """Open the stream and read up to its first whole event(s); nothing is sent yet, so
        anything going wrong here is still an ordinary error with its status."""
        timing = self._record.timing
        waiting_since = time.perf_counter()
        try:
            self._response = response = await self._open()
            if response.status != 200:
                refusal = await response.read(self._bounds.max_response_bytes)
                raise upstream_error_from_body(response.status, refusal)
            events = b""
            while not events:
                chunk = await response.read_chunk()
                if not chunk:
                    raise UpstreamFailed(
                        f"worker {self._worker_name} ended the stream before its first event"
                    )
                events = framer.feed(chunk)
        finally:
            timing.upstream += time.perf_counter() - waiting_since
        error = leading_error(events)
        if error is not None:  # the worker failed before its first token
            raise upstream_error_from_body(_status_of(error), error)
        return response, events

    async def _stream_broken(self, exc: TimeoutError | GatewayError, committed: bool) -> str | None:
        """Before the answer began, the failure is raised (an ordinary error with its status);
        after, it ends the stream as an error event. Returns the worker's fault."""
        if isinstance(exc, GatewayError):
            failure = exc
        else:
            what = f"no data for {self._bounds.idle:g}s" if committed else "no first token in time"
            failure = UpstreamTimeout(f"worker {self._worker_name} stalled: {what}")
        if not committed:
            raise failure from None
        log.log(
            failure.log_level,
            "request %s: stream broken after start: %s (%s)",
            self._record.request_id,
            failure.code,
            self._worker_name,
        )
        self._note(failure)
        await self._writer.body(self._stream_error(failure), final=True)
        return failure.worker_fault

    def _stream_error(self, error: GatewayError) -> bytes:
        return error.stream_event(self._out.dialect, named=self._out.named)

    async def _event(self, events: bytes) -> None:
        """Send events to the client, noting when (for time to first token and token gaps)."""
        tap = self._out.tap
        if tap is not None:
            events = tap.feed(events)
            if not events:
                return  # the usage chunk, which the client did not ask for
        await self._writer.body(events)
        now = time.perf_counter()
        timing = self._record.timing
        if timing.first_event is None:
            timing.first_event = now
        timing.last_event = now
        timing.events += 1

    def _note(self, exc: GatewayError) -> None:
        self._record.error_code = exc.code
        if isinstance(exc, UpstreamInvalid):
            self._record.upstream_violation = exc.violation

    async def _send_error(self, exc: GatewayError) -> None:
        try:
            await self._pass_gate()
        except GatewayError as refusal:  # refused by its limits: that is the answer
            exc = refusal
        self._note(exc)
        await self._writer.error(exc, self._out.dialect)


def _status_of(error_json: bytes) -> int:
    """vLLM puts the HTTP status in the in-band error's integer `code`."""
    try:
        code = orjson.loads(error_json)["error"]["code"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return 500
    return code if isinstance(code, int) and 400 <= code <= 599 else 500


async def _remember_id(remember: Callable[[str], Awaitable[None]], answer: bytes) -> None:
    """The Responses API's `id` (an answer) or `response.id` (a stream's first event)."""
    start = answer.find(b"{")
    end = answer.find(b"\n\n")
    try:
        doc = orjson.loads(answer[start : end if end > start else len(answer)])
    except orjson.JSONDecodeError:
        return
    if isinstance(doc, dict) and isinstance(doc.get("response"), dict):
        doc = doc["response"]
    response_id = doc.get("id") if isinstance(doc, dict) else None
    if isinstance(response_id, str) and response_id:
        await remember(response_id)
