"""A lean HTTP/1.1 client for worker traffic: asyncio protocols, httptools' C parser, a pool of
keep-alive connections. It does what the relay needs and nothing more: send a request (POST with
a body; GET or DELETE for a stored response), read the status and two headers, then the body as
it arrives (Content-Length, chunked, or until close).

Measured against aiohttp in the same runs (bench/RESULTS.md): the general-purpose client spent
most of the gateway's CPU per streamed chunk and per request on its own machinery (stream
readers, timers, header multidicts, response objects).

- Pool: idle connections per worker, reused last-in first-out, closed after `idle_timeout`;
  at most `max_connections` open, further requests wait in turn (within the connect timeout).
- Back-pressure: reading pauses while more than `_HIGH_WATER` bytes wait to be consumed.
- A reused connection may have been closed by the worker meanwhile: when it breaks before any
  byte of the answer arrived, within the connect timeout of sending, the request is sent once
  more on a new connection. A new connection that closes so soon without a byte of answer
  raises NoAnswer (a server going down still accepts, then closes): the caller may try another
  worker. Later such closes are ConnectionBroken (the worker may have worked on the request).
- Push: once a stream's answer has begun, H1Response.push hands each read's body bytes to a
  callback inside the read's own callback (no task wake-up per chunk), then calls `done` once
  with the end or the failure; the caller may pause and resume reading meanwhile.
- A body not read to its end closes the connection (the worker sees the close and aborts the
  generation); only a finished answer returns its connection to the pool.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import cast

import httptools

_HIGH_WATER = 1 << 20  # bytes buffered before reading pauses
_LOW_WATER = 1 << 18  # ...and resumes once the reader took it below this

Sink = Callable[[bytes], None]  # a pushed answer's body bytes, as each read brings them
Done = Callable[["H1Error | None"], None]  # its end (None) or failure, called once


class H1Error(Exception):
    """The exchange failed; the subclass says where."""


class ConnectFailed(H1Error):
    """No connection could be opened (refused, unresolvable, or not in time): nothing was
    sent."""


class ConnectionBroken(H1Error):
    """The connection closed or failed before the answer was complete."""


class NoAnswer(ConnectionBroken):
    """A new connection closed, at once, before any byte of the answer arrived: the worker
    accepted it and went away (a server shutting down) without working on it."""


class ProtocolError(H1Error):
    """The worker's bytes are not HTTP/1.1."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the answer being read on it."""

    __slots__ = (
        "_buffered",
        "_chunked",
        "_chunks",
        "_content_type",
        "_done",
        "_error",
        "_head_waiter",
        "_held",
        "_keep_alive",
        "_length",
        "_loop",
        "_paused",
        "_sink",
        "_status",
        "_waiter",
        "busy",
        "complete",
        "counted",
        "got_bytes",
        "idle_since",
        "key",
        "parser",
        "pool",
        "transport",
        "until_close",
    )

    def __init__(self, pool: H1Pool, key: tuple[str, int]) -> None:
        self._loop = asyncio.get_running_loop()
        self.pool = pool
        self.key = key
        self.counted = True  # holds one of the pool's slots until closed
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.busy = False
        self._reset()

    def _reset(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._status = 0
        self._content_type = b""
        self._length: int | None = None
        self._chunked = False
        self._keep_alive = False
        self.until_close = False
        self.complete = False
        self.got_bytes = False
        self._error: H1Error | None = None
        self._head_waiter: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._sink: Sink | None = None
        self._done: Done | None = None
        self._held = False  # reading paused by the consumer of a pushed body

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self._fail(ProtocolError("the worker sent bytes nobody asked for"))
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the worker upgraded the connection"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"invalid HTTP from the worker: {exc}"))
        if self._sink is not None and self._chunks:
            self._push_out()  # what this read brought, as one piece

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool._free(self)
        if self.until_close and exc is None and not self.complete and self._error is None:
            self.complete = True  # a body delimited by the close has ended
            self._wake()
            return
        if not self.complete:
            what = type(exc).__name__ if exc is not None else "closed by the worker"
            self._fail(ConnectionBroken(f"the connection broke ({what})"))

    # --- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"content-type":
            self._content_type = value
        elif lower == b"content-length":
            self._length = int(value) if value.strip().isdigit() else None
        elif lower == b"transfer-encoding":
            self._chunked = b"chunked" in value.lower()

    def on_headers_complete(self) -> None:
        status = self._status = self.parser.get_status_code()
        # Read now: llhttp forgets it once the message is complete.
        self._keep_alive = self.parser.should_keep_alive()
        # Neither a length nor chunked framing: the body runs until the worker closes.
        self.until_close = (
            self._length is None
            and not self._chunked
            and status >= 200
            and status not in (204, 304)
        )
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        if self._sink is not None:
            return  # handed on at the end of the read (data_received)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_message_complete(self) -> None:
        self.complete = True
        self.until_close = False
        self.busy = False
        self._wake()

    # --- the exchange -------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._sink is not None:
            self._push_out()
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: H1Error) -> None:
        if self._error is None:
            self._error = error
        if self.transport is not None:
            self.transport.close()
        for waiter in (self._head_waiter, self._waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        if self._sink is not None:
            self._push_out()

    # --- push ---------------------------------------------------------------------------------

    def push(self, sink: Sink, done: Done) -> None:
        """From now on hand the body to `sink` as it arrives (what is buffered first), and its
        end or failure to `done`, once."""
        self._sink, self._done = sink, done
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        self._buffered = 0
        self._push_out()

    def unpush(self) -> None:
        """No more calls to the sink and `done` (the answer is being closed); reading resumes
        if the consumer had paused it, so a finished connection goes back to the pool live."""
        self._sink = self._done = None
        self.hold(False)

    def hold(self, paused: bool) -> None:
        """Pause (True) or resume reading for the consumer of a pushed body."""
        if paused == self._held or self.transport is None:
            return
        self._held = paused
        if paused:
            self.transport.pause_reading()
        elif not self._paused:
            self.transport.resume_reading()

    def _push_out(self) -> None:
        sink, chunks = self._sink, self._chunks
        if sink is not None and chunks:
            data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            sink(data)
        done = self._done
        if done is None or not (self.complete or self._error is not None):
            return
        self._sink = self._done = None
        done(None if self.complete and self._error is None else self._error)

    async def exchange(self, request: bytes) -> None:
        """Send the request; return once the answer's status and headers are in."""
        transport = self.transport
        assert transport is not None
        self._reset()
        if transport.is_closing():
            raise ConnectionBroken("the connection closed")
        self.busy = True
        waiter = self._head_waiter = self._loop.create_future()
        transport.write(request)
        await waiter
        self._head_waiter = None
        if not self._status:
            raise self._error or ConnectionBroken("no answer")

    async def read_chunk(self) -> bytes:
        chunks = self._chunks
        while not chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._paused:
            self._buffered = 0
            self._paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        else:
            self._buffered = 0
        return data

    @property
    def status(self) -> int:
        return self._status

    @property
    def reusable(self) -> bool:
        transport = self.transport
        return (
            self.complete
            and not self.until_close
            and self._error is None
            and transport is not None
            and not transport.is_closing()
            and self._keep_alive
        )


class H1Response:
    """An answer whose status and headers have arrived; its body is read on demand."""

    __slots__ = ("_conn", "_released", "content_length", "content_type", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._released = False
        self.status = conn.status
        self.content_type = conn._content_type.decode("latin-1") or "application/json"
        self.content_length = conn._length

    async def read_chunk(self) -> bytes:
        """Whatever of the body has arrived (waiting for something); b"" at its end."""
        return await self._conn.read_chunk()

    async def read(self, limit: int) -> bytes:
        """The whole body; BodyTooLarge when it is larger than `limit` bytes (refused before
        it is buffered whole)."""
        if self.content_length is not None and self.content_length > limit:
            raise BodyTooLarge(limit)
        parts, size = [], 0
        while chunk := await self._conn.read_chunk():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def push(self, sink: Sink, done: Done) -> None:
        """Hand the rest of the body to `sink` read by read, then its end (None) or failure to
        `done`; calls may come before this returns. Instead of read_chunk."""
        self._conn.push(sink, done)

    def pause_reading(self) -> None:
        """Stop reading from the worker (the client is behind) until resume_reading (or
        close: a finished connection never goes back to the pool paused)."""
        self._conn.hold(True)

    def resume_reading(self) -> None:
        self._conn.hold(False)

    def close(self) -> None:
        """Done with the answer: a finished one returns its connection to the pool, an
        unfinished one closes it."""
        if not self._released:
            self._released = True
            self._conn.unpush()
            self._conn.pool._release(self._conn)


class BodyTooLarge(H1Error):
    """The body is larger than the reader's limit."""


class H1Pool:
    def __init__(
        self, connect_timeout: float, max_connections: int, idle_timeout: float = 30.0
    ) -> None:
        self._connect_timeout = connect_timeout
        self._max = max_connections if max_connections > 0 else 1 << 30
        self._idle_timeout = idle_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return self._open

    async def send(  # noqa: PLR0917 (a request's parts, in the order they go on the wire)
        self, method: str, host: str, port: int, path: str, headers: bytes, body: bytes
    ) -> H1Response:
        """`method` (POST, or GET/DELETE with an empty body) to http://host:port/path with
        `headers` (whole `Name: value\\r\\n` lines; Host and Content-Length are added here)."""
        request = b"%s %s HTTP/1.1\r\nHost: %s:%d\r\n%sContent-Length: %d\r\n\r\n%s" % (
            method.encode(),
            path.encode(),
            host.encode(),
            port,
            headers,
            len(body),
            body,
        )
        key = (host, port)
        loop = asyncio.get_running_loop()
        conn = self._reuse(key)
        if conn is not None:
            sent = loop.time()
            try:
                await conn.exchange(request)
                return H1Response(conn)
            except ConnectionBroken:
                self._discard(conn)
                if conn.got_bytes or not self._at_once(sent, loop):
                    raise
                # The worker closed the idle connection as we sent on it: once more, anew.
            except BaseException:
                self._discard(conn)
                raise
        conn = await self._connect(key)
        sent = loop.time()
        try:
            await conn.exchange(request)
        except ConnectionBroken as exc:
            self._discard(conn)
            if conn.got_bytes or not self._at_once(sent, loop):
                raise
            raise NoAnswer(str(exc)) from None
        except BaseException:
            self._discard(conn)
            raise
        return H1Response(conn)

    def _at_once(self, sent: float, loop: asyncio.AbstractEventLoop) -> bool:
        """The connection closed within the connect timeout of the request going out: the
        worker was closing it or going away, not working on the request. A later close without
        a byte (e.g. an engine dying in a long non-streamed generation) is not sent again: the
        request may have been what killed it."""
        return loop.time() - sent <= self._connect_timeout

    def _reuse(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        stale = asyncio.get_running_loop().time() - self._idle_timeout
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closed
            transport = conn.transport
            if conn.idle_since >= stale and transport is not None and not transport.is_closing():
                return conn
            self._discard(conn)
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        while self._open >= self._max:
            if self._close_one_idle():
                continue
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                raise ConnectFailed("no free connection in time") from None
            finally:
                if not waiter.done():
                    waiter.cancel()
            # A released connection may be idle for this very worker now.
            conn = self._reuse(key)
            if conn is not None:
                return conn
        self._open += 1
        made: list[_Connection] = []

        def factory() -> _Connection:
            made.append(_Connection(self, key))
            return made[0]

        try:
            async with asyncio.timeout_at(deadline):
                await loop.create_connection(factory, key[0], key[1])
        except BaseException as exc:
            if made:
                self._discard(made[0])
            else:
                self._open -= 1
                self._wake_one()
            if isinstance(exc, TimeoutError):
                raise ConnectFailed("connecting timed out") from None
            if isinstance(exc, OSError):
                raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
            raise
        return made[0]

    def _close_one_idle(self) -> bool:
        for idle in self._idle.values():
            if idle:
                self._discard(idle.pop(0))  # the oldest
                return True
        return False

    def _release(self, conn: _Connection) -> None:
        if conn.reusable and not self._closed:
            conn.idle_since = asyncio.get_running_loop().time()
            self._idle.setdefault(conn.key, []).append(conn)
            self._wake_one()
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        """Close `conn` now (unsent bytes dropped) and free its slot."""
        if conn.transport is not None and not conn.transport.is_closing():
            conn.transport.abort()
        self._free(conn)

    def _free(self, conn: _Connection) -> None:
        """The connection is closed or closing: free its slot, once."""
        if not conn.counted:
            return
        conn.counted = False
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for idle in list(self._idle.values()):
            for conn in list(idle):
                self._discard(conn)
            idle.clear()
