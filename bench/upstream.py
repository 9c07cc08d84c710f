"""A fake OpenAI upstream that costs almost nothing: raw asyncio HTTP/1.1, precomputed bytes.

    python -m bench.upstream --port P [--chunks K] [--gap-ms G] [--model NAME]

Streams advance like a vLLM engine: one global step every G ms sends the next chunk of every
open stream (each SSE event its own write, chunked transfer-encoding, as vLLM's uvicorn does).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import orjson

# Correct for compact and spaced JSON alike. A quote inside a JSON string is escaped (\"), so
# message text can't fake these keys.
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_INCLUDE_USAGE = re.compile(rb'"include_usage"\s*:\s*true')
_MAX_HEAD = 64 * 1024
_CREATED = 1_700_000_000
_PROMPT_TOKENS = 12


def _chunked(data: bytes) -> bytes:
    """One frame of chunked transfer-encoding."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _sse(doc: object) -> bytes:
    return _chunked(b"data: " + orjson.dumps(doc) + b"\n\n")


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status.encode(), content_type, len(body))
        + body
    )


@dataclass(frozen=True, slots=True)
class Answers:
    """Every byte the server sends for one endpoint, rendered once at start."""

    unary: bytes
    chunks: tuple[bytes, ...]  # K SSE frames; the last one carries finish_reason
    usage: bytes  # the include_usage frame (choices: [])


_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_DONE = _chunked(b"data: [DONE]\n\n")
_END = b"0\r\n\r\n"
_JSON = b"application/json"


def _usage(chunks: int) -> dict[str, int]:
    return {
        "prompt_tokens": _PROMPT_TOKENS,
        "total_tokens": _PROMPT_TOKENS + chunks,
        "completion_tokens": chunks,
    }


def build_answers(model: str, chunks: int) -> dict[bytes, Answers]:
    """Path -> the answers of the two completion endpoints, in vLLM's shapes."""
    usage = _usage(chunks)
    head = {"created": _CREATED, "model": model}
    text = " tok" * chunks

    def chat_choice(content: str, finish: str | None) -> dict[str, object]:
        delta = {"content": content}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def text_choice(content: str, finish: str | None) -> dict[str, object]:
        return {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}

    answers: dict[bytes, Answers] = {}
    for path, kind, prefix, choice in (
        (b"/v1/chat/completions", "chat.completion", "chatcmpl", chat_choice),
        (b"/v1/completions", "text_completion", "cmpl", text_choice),
    ):
        ident = {"id": f"{prefix}-bench", "object": kind}
        chunk_object = "chat.completion.chunk" if kind == "chat.completion" else kind
        if kind == "chat.completion":
            message = {"role": "assistant", "content": text}
            whole = {"index": 0, "message": message, "logprobs": None, "finish_reason": "length"}
        else:
            whole = text_choice(text, "length")
        unary = orjson.dumps({**ident, **head, "choices": [whole], "usage": usage})
        frames = tuple(
            _sse(
                {
                    **ident,
                    "object": chunk_object,
                    **head,
                    "choices": [choice(" tok", "length" if i == chunks - 1 else None)],
                }
            )
            for i in range(chunks)
        )
        final = _sse({**ident, "object": chunk_object, **head, "choices": [], "usage": usage})
        answers[path] = Answers(_response("200 OK", _JSON, unary), frames, final)
    return answers


@dataclass(slots=True)
class Counters:
    unary: int = 0
    streams: int = 0
    aborted: int = 0
    peak_streams: int = 0


@dataclass(slots=True)
class Stream:
    conn: Connection
    answers: Answers
    usage: bool
    sent: int = 1  # the first chunk goes out with the head


@dataclass
class Server:
    """Shared state: the answers, the open streams and the step clock that advances them."""

    model: str
    chunks: int
    gap: float
    answers: dict[bytes, Answers]
    counters: Counters = field(default_factory=Counters)
    open_streams: list[Stream] = field(default_factory=list)
    next_step: float | None = None  # loop time of the next step; None while no stream is open

    def start_stream(self, stream: Stream) -> None:
        self.counters.streams += 1
        if self.gap <= 0:
            for frame in stream.answers.chunks[1:]:
                stream.conn.write(frame)
            stream.sent = self.chunks
            self._finish(stream)
            return
        self.open_streams.append(stream)
        self.counters.peak_streams = max(self.counters.peak_streams, len(self.open_streams))
        if self.next_step is None:
            loop = asyncio.get_running_loop()
            self.next_step = loop.time() + self.gap
            loop.call_at(self.next_step, self._step)

    def _step(self) -> None:
        # One timer for all streams instead of one sleep per stream: cheaper, and it is how an
        # engine emits tokens (one decode step for the whole batch).
        still_open: list[Stream] = []
        for stream in self.open_streams:
            if stream.conn.closed:
                self.counters.aborted += 1
                continue
            stream.conn.write(stream.answers.chunks[stream.sent])
            stream.sent += 1
            if stream.sent >= self.chunks:
                self._finish(stream)
            else:
                still_open.append(stream)
        self.open_streams = still_open
        if still_open and self.next_step is not None:
            # Steps keep their grid (no drift); a late step is not made up for with a burst.
            loop = asyncio.get_running_loop()
            self.next_step = max(self.next_step + self.gap, loop.time())
            loop.call_at(self.next_step, self._step)
        else:
            self.next_step = None

    def _finish(self, stream: Stream) -> None:
        conn = stream.conn
        if stream.usage:
            conn.write(stream.answers.usage)
        conn.write(_DONE)
        conn.write(_END)
        conn.stream_done()

    def metrics(self) -> bytes:
        running = len(self.open_streams)
        labels = f'{{engine="0",model_name="{self.model}"}}'
        gauges = (
            ("vllm:num_requests_running", "Requests in the running batch.", running),
            ("vllm:num_requests_waiting", "Requests waiting to be scheduled.", 0),
            ("vllm:kv_cache_usage_perc", "KV cache usage (1 = full).", min(running / 1e4, 1.0)),
        )
        lines: list[str] = []
        for name, text, value in gauges:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name}{labels} {value}"]
        c = self.counters
        lines += [
            "# TYPE bench_upstream_requests_total counter",
            f'bench_upstream_requests_total{{kind="unary"}} {c.unary}',
            f'bench_upstream_requests_total{{kind="stream"}} {c.streams}',
            "# TYPE bench_upstream_streams_aborted_total counter",
            f"bench_upstream_streams_aborted_total {c.aborted}",
            "# TYPE bench_upstream_peak_streams gauge",
            f"bench_upstream_peak_streams {c.peak_streams}",
        ]
        return ("\n".join(lines) + "\n").encode()


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order, one at a time."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.streaming = False
        self.serving = False  # inside _serve: a stream that ends at once must not re-enter it
        self.closed = False
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def write(self, data: bytes) -> None:
        if not self.closed:
            assert self.transport is not None
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self._serve()

    def stream_done(self) -> None:
        self.streaming = False
        if self.close_after:
            self._close()
        elif self.buffer and not self.serving:
            self._serve()

    def _close(self) -> None:
        assert self.transport is not None
        self.transport.close()
        self.closed = True

    def _serve(self) -> None:
        """Answer every whole request in the buffer (pipelining), stopping at a stream."""
        self.serving = True
        try:
            self._serve_buffered()
        finally:
            self.serving = False

    def _serve_buffered(self) -> None:
        while not self.streaming and not self.closed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self._fail("431 Request Header Fields Too Large")
                return
            head = bytes(self.buffer[:end]).lower()
            if b"\r\ntransfer-encoding:" in head:
                self._fail("501 Not Implemented")  # our clients all send content-length
                return
            length = _content_length(head)
            if length is None:
                self._fail("400 Bad Request")
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            line_end = head.find(b"\r\n")
            request_line = head if line_end < 0 else head[:line_end]
            parts = request_line.split(b" ")
            if len(parts) != 3:
                self._fail("400 Bad Request")
                return
            self.close_after = b"\r\nconnection: close" in head
            self._dispatch(parts[0], parts[1].split(b"?", 1)[0], body)
            if self.close_after and not self.streaming and not self.closed:
                self._close()

    def _dispatch(self, method: bytes, path: bytes, body: bytes) -> None:
        server = self.server
        answers = server.answers.get(path)
        if answers is not None:
            if method != b"post":
                self.write(_error("405 Method Not Allowed"))
            elif _STREAM_TRUE.search(body):
                self.streaming = True
                self.write(_STREAM_HEAD)
                self.write(answers.chunks[0])
                usage = _INCLUDE_USAGE.search(body) is not None
                server.start_stream(Stream(self, answers, usage))
            else:
                server.counters.unary += 1
                self.write(answers.unary)
            return
        static = _STATIC.get(path)
        if static is None:
            self.write(_error("404 Not Found"))
        elif method != b"get":
            self.write(_error("405 Method Not Allowed"))
        else:
            self.write(static(server))

    def _fail(self, status: str) -> None:
        self.write(_error(status))
        self._close()


def _content_length(head: bytes) -> int | None:
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = head.find(b"\r\n", start)
    value = head[start:] if end < 0 else head[start:end]
    value = value.strip()
    return int(value) if value.isdigit() else None


def _error(status: str) -> bytes:
    code = int(status.split(" ", 1)[0])
    body = orjson.dumps({"error": {"message": status, "type": "BadRequestError", "code": code}})
    return _response(status, _JSON, body)


def _models(server: Server) -> bytes:
    model = {"id": server.model, "object": "model", "created": _CREATED, "owned_by": "bench"}
    return _response("200 OK", _JSON, orjson.dumps({"object": "list", "data": [model]}))


_STATIC: dict[bytes, Callable[[Server], bytes]] = {
    b"/health": lambda _server: _response("200 OK", b"text/plain", b""),
    b"/v1/models": _models,
    b"/metrics": lambda server: _response(
        "200 OK", b"text/plain; version=0.0.4; charset=utf-8", server.metrics()
    ),
}


async def serve(host: str, port: int, model: str, chunks: int, gap_ms: float) -> None:
    server = Server(model, chunks, gap_ms / 1000, build_answers(model, chunks))
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(lambda: Connection(server), host, port, backlog=8192)
    print(f"bench upstream on http://{host}:{port} ({chunks} chunks, {gap_ms:g} ms apart)")
    async with listener:
        await listener.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=32, help="content chunks per stream (>= 1)")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="ms between two chunks")
    parser.add_argument("--model", default="bench-model", help="model name in the answers")
    args = parser.parse_args()
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    try:
        import uvloop
    except ImportError:
        runner: Callable[..., object] = asyncio.run
    else:
        runner = uvloop.run
    started = time.monotonic()
    try:
        runner(serve(args.host, args.port, args.model, args.chunks, args.gap_ms))
    except KeyboardInterrupt:
        print(f"bench upstream stopped after {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
