"""The lean HTTP/1.1 client towards workers (gateway/relay/h1.py) against raw asyncio servers:
keep-alive reuse, the one retry on a reused connection the worker closed, a new connection
closed without an answer told apart from one broken mid-answer, the body framings,
the cap on open connections, and an unfinished body closing its connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.relay.h1 import (
    BodyTooLarge,
    ConnectFailed,
    ConnectionBroken,
    H1Pool,
    H1Response,
    NoAnswer,
)

Handler = Callable[[bytes, asyncio.StreamWriter], "asyncio.Future[None] | None"]


class Server:
    """Answers each request on a connection with `answer(n)` (n: requests so far, all
    connections); counts connections."""

    def __init__(self, answer: Callable[[int], bytes], close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.requests = 0
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def read_request(self, reader: asyncio.StreamReader) -> None:
        """One whole request (head and Content-Length body), counted."""
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        self.requests += 1

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                await self.read_request(reader)
                writer.write(self.answer(self.requests))
                await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Server], asyncio.Future[int]]]:
    servers: list[asyncio.Server] = []

    async def start(server: Server) -> int:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(listening)
        server.port = listening.sockets[0].getsockname()[1]
        return server.port

    yield start  # type: ignore[misc]
    for listening in servers:
        listening.close()


def _json(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


async def _post(pool: H1Pool, port: int, limit: int = 1 << 20) -> tuple[int, bytes]:
    response = await pool.send("POST", "127.0.0.1", port, "/v1/x", b"X-A: b\r\n", b"{}")
    try:
        return response.status, await response.read(limit)
    finally:
        response.close()


async def test_a_finished_answer_returns_its_connection_for_the_next(serve) -> None:  # type: ignore[no-untyped-def]
    server = Server(lambda n: _json(b'{"n":%d}' % n))
    port = await serve(server)
    pool = H1Pool(2.0, 10)
    for n in (1, 2, 3):
        assert await _post(pool, port) == (200, b'{"n":%d}' % n)
    assert (server.connections, pool.open_connections) == (1, 1)
    await pool.aclose()


async def test_chunked_and_until_close_bodies(serve) -> None:  # type: ignore[no-untyped-def]
    chunked = Server(
        lambda n: (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
    )
    until_close = Server(
        lambda n: b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it", True
    )
    pool = H1Pool(2.0, 10)
    assert await _post(pool, await serve(chunked)) == (200, b"abcde")
    assert await _post(pool, await serve(until_close)) == (200, b"all of it")
    assert pool.open_connections == 1  # the chunked one, kept; the other closed
    await pool.aclose()


async def test_a_reused_connection_closed_by_the_worker_is_retried_once_anew(serve) -> None:  # type: ignore[no-untyped-def]
    server = Server(lambda n: _json(b"ok"))
    port = await serve(server)
    pool = H1Pool(2.0, 10)
    assert await _post(pool, port) == (200, b"ok")
    for writer in server.writers:  # the worker drops its idle connection
        writer.transport.abort()
    await asyncio.sleep(0)
    assert await _post(pool, port) == (200, b"ok")
    assert server.connections == 2


async def test_a_connection_broken_mid_answer_is_an_error_not_a_retry(serve) -> None:  # type: ignore[no-untyped-def]
    server = Server(lambda n: b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", True)
    pool = H1Pool(2.0, 10)
    with pytest.raises(ConnectionBroken) as broken:
        await _post(pool, await serve(server))
    assert not isinstance(broken.value, NoAnswer)  # part of an answer came: not for a retry
    assert server.requests == 1


async def test_a_new_connection_closed_without_an_answer_is_no_answer(serve) -> None:  # type: ignore[no-untyped-def]
    replies = [_json(b"ok")]
    server = Server(lambda n: replies[0], True)  # a server going down: reads, then closes
    port = await serve(server)
    pool = H1Pool(2.0, 10)
    assert await _post(pool, port) == (200, b"ok")
    replies[0] = b""
    with pytest.raises(NoAnswer):
        await _post(pool, port)
    assert server.requests == 2
    assert pool.open_connections == 0


async def test_too_large_unreachable_and_an_unfinished_body(serve) -> None:  # type: ignore[no-untyped-def]
    server = Server(lambda n: _json(b"x" * 100)[:-50])  # half the body, then silence
    port = await serve(server)
    pool = H1Pool(0.5, 10)
    with pytest.raises(BodyTooLarge):
        await _post(pool, port, limit=10)
    assert pool.open_connections == 0  # not read to its end: closed
    response = await pool.send("POST", "127.0.0.1", port, "/v1/x", b"", b"{}")
    assert await response.read_chunk() == b"x" * 50
    response.close()
    assert pool.open_connections == 0
    with pytest.raises(ConnectFailed):
        await _post(pool, 1)  # nothing listens on port 1


async def test_at_the_cap_a_request_waits_for_a_free_connection(serve) -> None:  # type: ignore[no-untyped-def]
    server = Server(lambda n: _json(b"ok"))
    port = await serve(server)
    pool = H1Pool(2.0, 1)
    first = await pool.send("POST", "127.0.0.1", port, "/v1/x", b"", b"{}")
    second = asyncio.ensure_future(_post(pool, port))
    await asyncio.sleep(0.05)
    assert not second.done()
    assert await first.read(100) == b"ok"
    first.close()
    assert await second == (200, b"ok")
    assert server.connections == 1
    with pytest.raises(ConnectFailed):  # held, and the wait is bounded
        held = await pool.send("POST", "127.0.0.1", port, "/v1/x", b"", b"{}")
        try:
            await H1Pool._connect(pool, ("127.0.0.1", port))
        finally:
            held.close()


class PiecesServer(Server):
    """Answers with a chunked head, then each of `pieces` as its own write, 20 ms apart; None
    among them: abort the connection there."""

    def __init__(self, pieces: list[bytes | None]) -> None:
        super().__init__(lambda n: b"")
        self.pieces = pieces

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await self.read_request(reader)
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                for piece in self.pieces:
                    await asyncio.sleep(0.02)
                    if piece is None:
                        writer.transport.abort()
                        return
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if piece else b"0\r\n\r\n")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def _pushed(pool: H1Pool, port: int) -> tuple[list[bytes], list[object], H1Response]:
    """Wait for the first piece, then push the rest: (pieces seen, done's calls, response)."""
    response = await pool.send("POST", "127.0.0.1", port, "/v1/x", b"", b"{}")
    await asyncio.sleep(0.03)  # the first piece is buffered before the push
    seen: list[bytes] = []
    ends: list[object] = []
    finished = asyncio.Event()

    def done(exc: object) -> None:
        ends.append(exc)
        finished.set()

    response.push(seen.append, done)
    await asyncio.wait_for(finished.wait(), 2.0)
    return seen, ends, response


async def test_a_pushed_body_arrives_read_by_read_then_its_end_once(serve) -> None:  # type: ignore[no-untyped-def]
    server = PiecesServer([b"one", b"two", b"three", b""])
    port = await serve(server)
    pool = H1Pool(2.0, 10)
    seen, ends, response = await _pushed(pool, port)
    assert seen == [b"one", b"two", b"three"]  # the buffered one first, then one per read
    assert ends == [None]
    response.close()
    assert pool.open_connections == 1  # finished: kept for the next request
    await pool.aclose()


async def test_a_pushed_body_cut_by_the_worker_ends_with_its_failure(serve) -> None:  # type: ignore[no-untyped-def]
    server = PiecesServer([b"one", b"two", None])
    pool = H1Pool(2.0, 10)
    seen, ends, response = await _pushed(pool, await serve(server))
    assert seen == [b"one", b"two"]
    assert len(ends) == 1
    assert isinstance(ends[0], ConnectionBroken)
    response.close()
    assert pool.open_connections == 0


async def test_a_closed_answer_pushes_nothing_more(serve) -> None:  # type: ignore[no-untyped-def]
    server = PiecesServer([b"one", b"two", b"three", b""])
    pool = H1Pool(2.0, 10)
    response = await pool.send("POST", "127.0.0.1", await serve(server), "/v1/x", b"", b"{}")
    seen: list[bytes] = []
    ends: list[object] = []
    response.push(seen.append, ends.append)
    await asyncio.sleep(0.03)
    response.close()  # unfinished: the connection closes, and the callbacks are forgotten
    await asyncio.sleep(0.1)
    assert seen == [b"one"]
    assert ends == []
    assert pool.open_connections == 0


async def test_a_connection_paused_by_its_consumer_goes_back_to_the_pool_reading(serve) -> None:  # type: ignore[no-untyped-def]
    # The whole answer in one read: its last events and its end come while the client is behind.
    whole = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\n"
    server = Server(lambda n: whole)
    port = await serve(server)
    pool = H1Pool(2.0, 10)
    response = await pool.send("POST", "127.0.0.1", port, "/v1/x", b"", b"{}")
    ends: list[object] = []
    response.push(lambda data: response.pause_reading(), ends.append)
    assert ends == [None]
    response.close()
    assert pool.open_connections == 1
    assert await asyncio.wait_for(_post(pool, port), 2.0) == (200, b"one")  # not left paused
    assert server.connections == 1
    await pool.aclose()


class LateCloser(Server):
    """Reads a request, then closes without a byte after `delay` seconds (an engine dying in the
    middle of a long generation)."""

    def __init__(self, delay: float) -> None:
        super().__init__(lambda n: b"")
        self.delay = delay

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await self.read_request(reader)
        await asyncio.sleep(self.delay)
        writer.transport.abort()


async def test_a_close_without_answer_after_a_while_is_not_no_answer(serve) -> None:  # type: ignore[no-untyped-def]
    pool = H1Pool(0.2, 10)  # the window: the connect timeout
    with pytest.raises(NoAnswer):
        await _post(pool, await serve(LateCloser(0.0)))
    late = LateCloser(0.5)
    with pytest.raises(ConnectionBroken) as broken:
        await _post(pool, await serve(late))
    assert not isinstance(broken.value, NoAnswer)  # it may have been working on it: no retry
    assert late.requests == 1
