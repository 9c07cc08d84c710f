"""What reaches the client's socket, write by write: an answer's head leaves with the first piece
of its body (one syscall, one segment), and is never kept waiting for a body that comes later.

The real server protocol (GatewayHttpProtocol on uvicorn's httptools cycle) and the relay's
ClientWriter, on a transport that records each write."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.record import RequestRecord
from gateway.relay.client import ClientWriter, client_link
from gateway.relay.disconnect import DisconnectWatch
from gateway.server.protocol import GatewayHttpProtocol

REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
SSE = [(b"content-type", b"text/event-stream")]


class Transport(asyncio.Transport):
    """Records every write as it is made."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


Answer = Callable[[ClientWriter, Transport], Awaitable[None]]


async def served(answer: Answer) -> list[bytes]:
    """The writes the connection made while `answer` wrote the request's answer."""
    done = asyncio.get_running_loop().create_future()
    transport = Transport()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        link = client_link(scope)
        record = RequestRecord.start("id", "POST", scope["path"])
        writer = ClientWriter(send, link, 5.0, record, DisconnectWatch(receive, link), [])
        try:
            await answer(writer, transport)
        finally:
            done.set_result(None)

    config = Config(app=app, lifespan="off", log_level="warning")
    protocol = GatewayHttpProtocol(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(transport)
    protocol.data_received(REQUEST)
    await asyncio.wait_for(done, 2.0)
    await asyncio.sleep(0)
    protocol.connection_lost(None)
    return transport.writes


async def test_a_whole_answer_is_one_write() -> None:
    async def answer(writer: ClientWriter, _: Transport) -> None:
        await writer.start(200, [(b"content-type", b"application/json")], 7)
        await writer.body(b'{"a":1}', final=True)

    writes = await served(answer)
    assert len(writes) == 1, writes
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert writes[0].endswith(b'\r\n\r\n{"a":1}')


async def test_a_stream_s_head_leaves_with_its_first_event_and_the_rest_as_they_come() -> None:
    async def answer(writer: ClientWriter, _: Transport) -> None:
        await writer.start(200, SSE, None)
        await writer.body(b"data: 1\n\n")
        await writer.body(b"data: 2\n\n")
        await writer.body(b"", final=True)

    writes = await served(answer)
    assert len(writes) == 3, writes
    assert b"transfer-encoding: chunked\r\n" in writes[0]
    assert writes[0].endswith(b"\r\n\r\n9\r\ndata: 1\n\n\r\n")
    assert writes[1:] == [b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]


async def test_a_head_is_not_kept_waiting_for_a_later_body() -> None:
    before_the_body: list[bytes] = []

    async def answer(writer: ClientWriter, transport: Transport) -> None:
        await writer.start(200, SSE, None)
        await asyncio.sleep(0.01)  # the first event is not there yet
        before_the_body.extend(transport.writes)
        await writer.body(b"data: 1\n\n")
        await writer.body(b"", final=True)

    writes = await served(answer)
    assert len(before_the_body) == 1
    assert before_the_body[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(writes) == 3
