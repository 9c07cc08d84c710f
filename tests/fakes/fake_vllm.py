"""A scriptable fake vLLM OpenAI server on raw asyncio streams (real sockets, exact control).

The request body's `"fake"` object scripts the answer, e.g.
  {"fake": {"status": 500}}                  answer 500 with vLLM's error envelope
  {"fake": {"stall_first": 30}}              stall before the first byte/event
  {"fake": {"chunks": 5, "gap": 0.1}}        stream 5 content chunks, 0.1 s apart
  {"fake": {"cut_after": 2}}                 close the socket abruptly after 2 chunks
  {"fake": {"stall_after": 2}}               stop sending (but keep the socket) after 2 chunks
  {"fake": {"inband_error_after": 0}}        vLLM's mid-stream error event + [DONE]
  {"fake": {"text": "xyz"}}                  the completion's text (streams: xyz0, xyz1, ...)
  {"fake": {"raw": "not json"}}              answer 200 with these bytes as the whole body
  {"fake": {"pad": 200000}}                  a valid answer padded to at least that many bytes
  {"fake": {"junk_after": 1}}                after 1 chunk, binary garbage instead of events
  {"fake": {"big_event_after": 1, "pad": 9}} after 1 chunk, one event of `pad` bytes
The other paths vLLM serves (embeddings, responses, messages, rerank, score, pooling,
classify, tokenize, detokenize, audio, LoRA loading, /v1/models) answer as vLLM would
(tests/fakes/fake_apis.py).
GET /fake/stats reports requests seen, in progress, and aborted by the peer (the gateway).
POST /fake/control sets the whole server's behaviour from then on, e.g.
  {"delay": 0.5}                             every completion waits 0.5 s before answering
  {"waiting": 12, "kv": 0.9}                 what /metrics reports (vLLM's queue and KV cache)
  {"cache_blocks": 40}                       its KV cache size (cache_config_info, 16-token blocks)
  {"prompt_tokens": 900}                     the prompt tokens its usage reports (default 3)
  {"health": 503}                            what /health answers
  {"status": 503}                            every completion answers this error
  {"drop": true}                             every completion: read it, close, answer nothing
  {"adapters": ["a"]}                        the LoRA adapters it has loaded (/v1/models)
  {"reset": true}                            zero the stats
Run: python -m tests.fakes.fake_vllm --port P [--model NAME] [--host ADDRESS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from tests.fakes import fake_apis


@dataclass
class Stats:
    requests: int = 0
    active: int = 0
    aborted: int = 0
    completed: int = 0
    last_headers: dict[str, str] | None = None
    last_body: dict[str, Any] | None = None
    last_path: str | None = None
    lora_loads: int = 0


class PeerGone(Exception):
    pass


@dataclass
class Control:
    delay: float = 0.0
    waiting: int = 0
    kv: float = 0.0
    health: int = 200
    status: int | None = None
    drop: bool = False  # a server going down: it reads the request and closes the connection
    cache_blocks: int = 1000  # vllm:cache_config_info num_gpu_blocks (block_size 16)
    prompt_tokens: int = 3  # what usage reports
    adapters: list[str] | None = None  # LoRA adapters loaded, when set


class FakeVLLM:
    def __init__(self, model: str) -> None:
        self.model = model
        self.stats = Stats()
        self.control = Control()
        self.started = time.time()
        self.api = fake_apis.ApiState(model)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, PeerGone):
            pass
        finally:
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        raw = await reader.readexactly(length) if length else b""
        if method == "GET":
            await self._get(path, writer)
            return True
        body = fake_apis.parse_body(raw, headers.get("content-type", ""))
        if path == "/fake/control":
            if body.pop("reset", False):
                self.stats = Stats()
            for name, value in body.items():
                setattr(self.control, name, value)
            if self.control.adapters is not None:
                self.api.adapters = list(self.control.adapters)
            await _respond(writer, 200, b"{}")
            return True
        self.stats.last_path = path
        self.stats.requests += 1
        if self.control.drop:
            return False  # handle() closes the connection: not a byte of answer
        self.stats.active += 1
        self.stats.last_headers = headers
        self.stats.last_body = body
        try:
            await self._post(path, body, reader, writer)
            self.stats.completed += 1
        except (ConnectionError, PeerGone):
            self.stats.aborted += 1
            raise
        finally:
            self.stats.active -= 1
        return not body.get("fake", {}).get("close", False)

    async def _get(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path == "/health":
            await _respond(writer, self.control.health, b"")
        elif path == "/fake/stats":
            self.stats.lora_loads = self.api.lora_loads
            await _respond(writer, 200, json.dumps(self.stats.__dict__).encode())
        elif path == "/v1/models":
            await _respond(writer, 200, _dumps(fake_apis.models(self.api)).encode())
        elif (found := fake_apis.by_id(self.api, "GET", path)) is not None:
            await _respond(writer, found[0], _dumps(found[1]).encode())
        elif path == "/metrics":
            labels = f'{{model_name="{self.model}",engine="0"}}'
            text = (
                f"vllm:num_requests_running{labels} {self.stats.active}\n"
                f"vllm:num_requests_waiting{labels} {self.control.waiting}\n"
                f"vllm:kv_cache_usage_perc{labels} {self.control.kv}\n"
                f'vllm:cache_config_info{{block_size="16",engine="0",'
                f'num_gpu_blocks="{self.control.cache_blocks}"}} 1.0\n'
                f"process_start_time_seconds {self.started}\n"
            )
            await _respond(writer, 200, text.encode(), "text/plain")
        else:
            await _respond(writer, 404, b'{"detail":"Not Found"}')

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        script = body.get("fake", {})
        if self.control.delay:
            await _wait_or_peer_gone(reader, self.control.delay)
        if "status" in script or self.control.status:
            status = int(script.get("status") or self.control.status or 500)
            err = {
                "error": {
                    "message": f"fake error {status}",
                    "type": "BadRequestError",
                    "param": "fake",
                    "code": status,
                }
            }
            await _respond(writer, status, _dumps(err).encode())
            return
        if await self._other_api(path, body, reader, writer):
            return
        chat = path.endswith("/chat/completions")
        if not body.get("stream"):
            await _wait_or_peer_gone(reader, script.get("stall_first", 0))
            answer = _completion(
                self.model, chat, script.get("text", "hello"), self.control.prompt_tokens
            )
            if script.get("pad"):
                answer["padding"] = "x" * int(script["pad"])
            raw = script.get("raw")
            await _respond(writer, 200, raw.encode() if raw else _dumps(answer).encode())
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        await _wait_or_peer_gone(reader, script.get("stall_first", 0))
        await self._stream(script, chat, body, reader, writer)

    async def _other_api(
        self,
        path: str,
        body: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """The paths beyond the completions; False: not one of them."""
        api = self.api
        api.prompt_tokens = self.control.prompt_tokens
        script = body.get("fake", {})
        if path in {"/v1/responses", "/v1/messages"} and body.get("stream"):
            await _stream_head(writer)
            await _wait_or_peer_gone(reader, script.get("stall_first", 0))
            count = script.get("chunks", 3)
            for index, event in enumerate(fake_apis.named_events(api, path, body, count)):
                if index == script.get("cut_after"):
                    writer.transport.abort()
                    raise PeerGone
                await _chunk(writer, event)
                if script.get("gap"):
                    await _wait_or_peer_gone(reader, script["gap"])
            await _chunk(writer, b"")
            return True
        if path.startswith("/v1/audio/"):
            await _wait_or_peer_gone(reader, script.get("stall_first", 0))
            text = {"text": "fake transcription"}
            if not body.get("stream"):
                await _respond(writer, 200, _dumps(text).encode())
                return True
            await _stream_head(writer)
            for index in range(3):
                delta = {
                    "object": "transcription.chunk",
                    "choices": [{"delta": {"content": index}}],
                }
                await _chunk(writer, b"data: " + _dumps(delta).encode() + b"\n\n")
                await _wait_or_peer_gone(reader, script.get("gap", 0))
            await _chunk(writer, b"data: [DONE]\n\n")
            await _chunk(writer, b"")
            return True
        found = fake_apis.answer(api, path, body) or fake_apis.by_id(api, "POST", path)
        if found is None:
            return False
        await _wait_or_peer_gone(reader, script.get("stall_first", 0))
        await _respond(writer, found[0], _dumps(found[1]).encode())
        return True

    async def _stream(
        self,
        script: dict[str, Any],
        chat: bool,
        body: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        count = script.get("chunks", 3)
        for index in range(count):
            if index == script.get("cut_after"):
                writer.transport.abort()
                raise PeerGone
            if index == script.get("stall_after"):
                await _wait_or_peer_gone(reader, 3600)
            if index == script.get("junk_after"):
                await _chunk(writer, bytes(range(256)) * 4 + b"\n\n" + bytes(range(7, 200)))
                await _chunk(writer, b"")
                return
            if index == script.get("big_event_after"):
                await _chunk(writer, b'data: {"x": "' + b"y" * int(script["pad"]) + b'"}\n\n')
            if index == script.get("inband_error_after"):
                err = {
                    "error": {
                        "message": "Internal server error",
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    }
                }
                await _chunk(writer, b"data: " + _dumps(err).encode() + b"\n\n")
                await _chunk(writer, b"data: [DONE]\n\n")
                await _chunk(writer, b"")
                return
            await _chunk(
                writer,
                b"data: "
                + _dumps(_delta(self.model, chat, script.get("text", "t") + str(index))).encode()
                + b"\n\n",
            )
            if script.get("gap"):
                await _wait_or_peer_gone(reader, script["gap"])
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "cmpl-fake",
                "object": "chat.completion.chunk",
                "model": self.model,
                "choices": [],
                "usage": {
                    "prompt_tokens": self.control.prompt_tokens,
                    "completion_tokens": count,
                    "total_tokens": self.control.prompt_tokens + count,
                },
            }
            await _chunk(writer, b"data: " + _dumps(usage).encode() + b"\n\n")
        await _chunk(writer, b"data: [DONE]\n\n")
        await _chunk(writer, b"")


async def _stream_head(writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    await writer.drain()


def _dumps(doc: object) -> str:
    return json.dumps(doc, separators=(",", ":"))  # compact, as vLLM writes it


def _completion(model: str, chat: bool, text: str, prompt_tokens: int) -> dict[str, Any]:
    choice: dict[str, Any] = (
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if chat
        else {"index": 0, "text": text, "finish_reason": "stop"}
    )
    return {
        "id": "cmpl-fake",
        "object": "chat.completion" if chat else "text_completion",
        "created": 0,
        "model": model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 1,
            "total_tokens": prompt_tokens + 1,
        },
    }


def _delta(model: str, chat: bool, text: str) -> dict[str, Any]:
    choice: dict[str, Any] = (
        {"index": 0, "delta": {"content": text + " "}, "finish_reason": None}
        if chat
        else {"index": 0, "text": text + " ", "finish_reason": None}
    )
    return {
        "id": "cmpl-fake",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": 0,
        "model": model,
        "choices": [choice],
    }


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json"
) -> None:
    head = f"HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    await writer.drain()


async def _wait_or_peer_gone(reader: asyncio.StreamReader, seconds: float) -> None:
    """Sleep, but notice at once when the peer closes the connection (like vLLM's abort)."""
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            data = await reader.read(1)
            if not data:
                raise PeerGone


async def serve(port: int, model: str, host: str = "127.0.0.1") -> None:
    fake = FakeVLLM(model)
    server = await asyncio.start_server(fake.handle, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fake")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.model, args.host))


if __name__ == "__main__":
    main()
