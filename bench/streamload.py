"""A cheap streaming load generator: C keep-alive connections, each sending SSE requests in turn.

    python -m bench.streamload --url http://127.0.0.1:P --concurrency C --duration S --chunks K

Raw asyncio protocols (uvloop when present), no HTTP library. Every response is checked: status
200, every event `data: <JSON object>` except one final `data: [DONE]`, exactly K chunks plus the
usage chunk. Prints one JSON summary line; exits 1 if any response was invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

from bench.stats import percentile

_MAX_EXAMPLES = 5


class Invalid(Exception):
    """The response broke the protocol; the message says how."""


@dataclass(slots=True)
class Outcome:
    error: str | None
    sent: float = 0.0  # perf_counter() when the request was written
    ttft: float = 0.0
    latency: float = 0.0
    chunks: int = 0
    reusable: bool = False


@dataclass
class Tally:
    """Everything measured, over all connections.

    Every response is validated, but only the measurement window [start, end) is reported:
    TTFT and latency of the requests sent in it, chunks received and requests finished in it.
    """

    start: float = 0.0
    end: float = float("inf")
    ttft: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    chunk_counts: Counter[int] = field(default_factory=Counter)
    requests: int = 0
    invalid: int = 0
    examples: list[str] = field(default_factory=list)
    finished: int = 0  # valid responses, all of them; the window's are a difference
    events: int = 0  # chunks received, all of them
    open_now: int = 0
    peak_open: int = 0

    def add(self, outcome: Outcome) -> None:
        self.requests += 1
        if outcome.error is not None:
            self.invalid += 1
            if len(self.examples) < _MAX_EXAMPLES:
                self.examples.append(outcome.error)
            return
        self.finished += 1
        self.chunk_counts[outcome.chunks] += 1
        if self.start <= outcome.sent < self.end:
            self.ttft.append(outcome.ttft)
            self.latency.append(outcome.latency)


@dataclass(frozen=True, slots=True)
class Expect:
    chunks: int  # content chunks per stream
    usage: bool  # one more chunk (choices: [], usage) before [DONE]


class SSEConnection(asyncio.Protocol):
    """One keep-alive connection; parses the HTTP/1.1 response and its SSE events as they come."""

    def __init__(self, expect: Expect, tally: Tally) -> None:
        self.expect = expect
        self.tally = tally
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pending: asyncio.Future[Outcome] | None = None
        self.buffer = bytearray()
        self.events = bytearray()
        self._reset(0.0)

    def _reset(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.head_done = False
        self.chunked = False
        self.length = -1
        self.keep_alive = True
        self.frame: int | None = None  # size of the chunk being read; None: at a size line
        self.error_body = b""
        self.ttft = 0.0
        self.chunks = 0
        self.done = False
        self.last: dict[str, Any] | None = None
        self.counted_open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pending is not None:
            self._end(f"connection lost mid-response ({exc!r})")

    def send(self, request: bytes) -> asyncio.Future[Outcome]:
        assert self.transport is not None
        assert self.pending is None
        self.pending = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self.events.clear()
        self._reset(time.perf_counter())
        self.transport.write(request)
        return self.pending

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def data_received(self, data: bytes) -> None:
        if self.pending is None:
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self.buffer += data
        try:
            self._parse()
        except (Invalid, ValueError) as exc:
            self._end(str(exc))

    def abandon(self) -> None:
        """The caller stopped waiting (timeout): forget the request and drop the connection."""
        self._end("abandoned")
        self.close()

    def _end(self, error: str | None) -> None:
        pending, self.pending = self.pending, None
        if self.counted_open:
            self.counted_open = False
            self.tally.open_now -= 1
        if pending is None or pending.done():  # done: the caller timed out and gave up
            return
        reusable = error is None and self.keep_alive and not self.closed
        latency = time.perf_counter() - self.started
        pending.set_result(Outcome(error, self.started, self.ttft, latency, self.chunks, reusable))

    def _parse(self) -> None:
        buffer = self.buffer
        if not self.head_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self._head(bytes(buffer[:end]).lower())
            del buffer[: end + 4]
        if not self.chunked:
            if len(buffer) >= self.length:
                self._body(bytes(buffer[: self.length]))
                del buffer[: self.length]
                self._finish()
            return
        while self.pending is not None:
            if self.frame is None:
                line_end = buffer.find(b"\r\n")
                if line_end < 0:
                    return
                self.frame = int(bytes(buffer[:line_end]).split(b";", 1)[0], 16)
                del buffer[: line_end + 2]
            if len(buffer) < self.frame + 2:
                return
            if buffer[self.frame : self.frame + 2] != b"\r\n":
                raise Invalid("bad chunked framing")
            if self.frame == 0:
                del buffer[:2]
                self._finish()
                return
            self._body(bytes(buffer[: self.frame]))
            del buffer[: self.frame + 2]
            self.frame = None

    def _head(self, head: bytes) -> None:
        self.head_done = True
        self.status = int(head[9:12])
        self.keep_alive = b"\r\nconnection: close" not in head
        self.chunked = b"\r\ntransfer-encoding: chunked" in head
        if not self.chunked:
            start = head.find(b"\r\ncontent-length:")
            if start < 0:
                raise Invalid(f"status {self.status}: neither chunked nor content-length")
            line = head[start + 17 :].split(b"\r\n", 1)[0]
            self.length = int(line.strip())
        if self.status == 200:
            if b"\r\ncontent-type: text/event-stream" not in head:
                raise Invalid("status 200 but not text/event-stream")
            self.counted_open = True
            self.tally.open_now += 1
            self.tally.peak_open = max(self.tally.peak_open, self.tally.open_now)

    def _body(self, data: bytes) -> None:
        if self.status != 200:
            self.error_body = (self.error_body + data)[:300]
            return
        events = self.events
        events += data
        start = 0
        while (end := events.find(b"\n\n", start)) >= 0:
            self._event(bytes(events[start:end]))
            start = end + 2
        del events[:start]

    def _event(self, event: bytes) -> None:
        if self.done:
            raise Invalid("an event after [DONE]")
        if not event.startswith(b"data:"):
            raise Invalid(f"not a data event: {event[:120]!r}")
        payload = event[6:] if event.startswith(b"data: ") else event[5:]
        if payload == b"[DONE]":
            self.done = True
            return
        if self.chunks == 0:
            self.ttft = time.perf_counter() - self.started
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise Invalid(f"an event is not JSON: {payload[:120]!r}") from None
        if not isinstance(doc, dict):
            raise Invalid(f"an event is not a JSON object: {payload[:120]!r}")
        if "error" in doc:
            raise Invalid(f"error event: {payload[:200]!r}")
        self.chunks += 1
        self.tally.events += 1
        self.last = doc

    def _finish(self) -> None:
        if self.status != 200:
            raise Invalid(f"status {self.status}: {self.error_body[:200]!r}")
        if self.events:
            raise Invalid("the stream ended inside an event")
        if not self.done:
            raise Invalid(f"no [DONE] (after {self.chunks} chunks)")
        expected = self.expect.chunks + self.expect.usage
        if self.chunks != expected:
            raise Invalid(f"{self.chunks} chunks, expected {expected}")
        if self.expect.usage:
            last = self.last or {}
            if last.get("choices") != [] or not isinstance(last.get("usage"), dict):
                raise Invalid("the last chunk is not the usage chunk")
        self._end(None)


@dataclass(frozen=True, slots=True)
class Plan:
    host: str
    port: int
    request: bytes
    expect: Expect
    concurrency: int
    duration: float | None  # measure this long after the warm-up, then let in-flight finish...
    per_connection: int | None  # ...or send exactly this many per connection, all measured
    ramp: float  # connections start evenly spread over this many seconds
    think: float  # a random pause of up to this many seconds before each next request
    warmup: float  # seconds from the start before the measurement window opens
    timeout: float


def build_request(
    url: str, model: str, chunks: int, usage: bool, api_key: str = ""
) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path if parts.path not in ("", "/") else "/v1/chat/completions"
    doc: dict[str, Any] = {"model": model, "max_tokens": chunks, "stream": True}
    if path.endswith("/chat/completions"):
        doc["messages"] = [{"role": "user", "content": "Say something, please."}]
    else:
        doc["prompt"] = "Say something, please."
    if usage:
        doc["stream_options"] = {"include_usage": True}
    # Spaced JSON ("stream": true), as Python's json module writes it; the wrk body is compact.
    body = json.dumps(doc).encode()
    auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
    )
    return host, port, head.encode() + body


async def _connect(plan: Plan, tally: Tally) -> SSEConnection | None:
    """A new connection, or None after counting the failure as an invalid response."""
    loop = asyncio.get_running_loop()
    try:
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: SSEConnection(plan.expect, tally), plan.host, plan.port),
            plan.timeout,
        )
    except (OSError, TimeoutError) as exc:
        tally.add(Outcome(f"connect failed: {exc!r}"))
        return None
    return conn


async def _connection(plan: Plan, index: int, started: float, tally: Tally) -> None:
    await asyncio.sleep(max(0.0, started + plan.ramp * index / plan.concurrency - _now()))
    conn: SSEConnection | None = None
    sent = 0
    while (plan.per_connection is None or sent < plan.per_connection) and _now() < tally.end:
        if sent and plan.think > 0:
            # Streams end on an engine step; without a pause every next request would arrive
            # exactly when the step's chunks do, which real clients have no reason to do.
            await asyncio.sleep(random.uniform(0, plan.think))
        sent += 1
        if conn is None or conn.closed:
            conn = await _connect(plan, tally)
            if conn is None:
                await asyncio.sleep(0.05)  # a refused port must not become a busy loop
                continue
        try:
            outcome = await asyncio.wait_for(conn.send(plan.request), plan.timeout)
        except TimeoutError:
            outcome = Outcome(f"no complete answer within {plan.timeout:g}s")
            conn.abandon()
        tally.add(outcome)
        if not outcome.reusable:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def _now() -> float:
    return time.perf_counter()  # the clock of Outcome.sent and of the window


def _mark(name: str) -> None:
    # The caller (bench.loads) reads the gateway's CPU time when it sees this line.
    print(f"MARK {name}", flush=True)


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    finished: int
    events: int

    @classmethod
    def of(cls, tally: Tally) -> Snapshot:
        return cls(_now(), tally.finished, tally.events)


async def run(plan: Plan) -> dict[str, Any]:
    """Run the plan; the summary is JSON-ready."""
    started = _now()
    tally = Tally(start=started)
    if plan.duration is not None:
        tally.start = started + plan.warmup
        tally.end = tally.start + plan.duration
    connections = asyncio.gather(
        *(_connection(plan, i, started, tally) for i in range(plan.concurrency))
    )
    if plan.duration is None:  # everything is measured
        _mark("start")
        first = Snapshot(started, 0, 0)
        await connections
        last = Snapshot.of(tally)
        _mark("end")
    else:
        await asyncio.sleep(max(0.0, tally.start - _now()))
        first = Snapshot.of(tally)
        _mark("start")
        await asyncio.sleep(max(0.0, tally.end - _now()))
        last = Snapshot.of(tally)
        _mark("end")
        await connections  # in-flight requests finish, and are checked too
    elapsed = last.at - first.at
    requests = last.finished - first.finished
    chunks = last.events - first.events
    return {
        "requests": tally.requests,
        "valid": tally.requests - tally.invalid,
        "invalid": tally.invalid,
        "examples": tally.examples,
        "chunk_counts": {str(k): v for k, v in sorted(tally.chunk_counts.items())},
        "peak_open": tally.peak_open,
        "concurrency": plan.concurrency,
        "window": {
            "elapsed_s": elapsed,
            "requests": requests,
            "chunks": chunks,
            "requests_per_s": requests / elapsed if elapsed > 0 else 0.0,
            "chunks_per_s": chunks / elapsed if elapsed > 0 else 0.0,
            "ttft_ms": _percentiles(tally.ttft),
            "latency_ms": _percentiles(tally.latency),
        },
    }


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return dict.fromkeys(("p50", "p90", "p99", "max"))  # JSON has no NaN
    return {
        name: percentile(seconds, q) * 1000
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }


def raise_open_files(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (up to the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.streamload", description=__doc__)
    parser.add_argument("--url", required=True, help="http://HOST:PORT[/v1/chat/completions]")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--api-key", default="", help="sent as Authorization: Bearer")
    parser.add_argument("--concurrency", "-c", type=int, default=64)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--duration", type=float, help="seconds measured (then in-flight finish)")
    group.add_argument("--per-connection", type=int, help="requests per connection, then stop")
    parser.add_argument("--chunks", type=int, required=True, help="content chunks each stream has")
    parser.add_argument("--no-usage", action="store_true", help="do not ask for the usage chunk")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds to open all connections")
    parser.add_argument(
        "--think-ms", type=float, default=0.0, help="random pause before each next request, ms"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.0, help="seconds before measuring (with --duration)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args(argv)
    limit = raise_open_files(args.concurrency + 256)
    if limit < args.concurrency + 32:
        print(f"streamload: open-files limit {limit} is too low", file=sys.stderr)
        return 2
    host, port, request = build_request(
        args.url, args.model, args.chunks, not args.no_usage, args.api_key
    )
    plan = Plan(
        host,
        port,
        request,
        Expect(args.chunks, not args.no_usage),
        args.concurrency,
        args.duration,
        args.per_connection,
        args.ramp,
        args.think_ms / 1000,
        args.warmup,
        args.timeout,
    )
    runner: Callable[..., dict[str, Any]]
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    summary = runner(run(plan))
    print(json.dumps(summary))
    return 1 if summary["invalid"] or not summary["valid"] else 0


if __name__ == "__main__":
    sys.exit(main())
