"""The limiter's own link to Redis: one connection, a batch of commands written at once, the
replies parsed by hiredis (the C parser redis-py itself uses).

Every request that has limits makes one EVALSHA on its path. A whole limiter decision cost
154-199 µs of the gateway's CPU through redis-py's asyncio client (pool checkout, command
objects, a task per timed write) and 102-135 µs through this link; a request at c=1, 652 -> 515
µs (bench/RESULTS.md, "The limiter's link to Redis"). The ScriptBatcher sends one batch at a time,
so a single connection serves it; everything else (usage reads, health, stored responses)
keeps using redis-py.

Failures raise redis-py's exceptions, which the limiter already handles: ConnectionError
(refused, closed), TimeoutError (no reply within `timeout`: the connection is dropped, since
later replies would be out of step). A batch is never sent twice: the admit and settle scripts
are not idempotent, and a connection that broke after the write may have been run already (a
Redis restart closes the idle connection, which is noticed before the next batch: that one goes
on a new connection). A caller cancelled mid-batch leaves the connection in step: its replies
are read and dropped. Error replies come back in place, as ResponseError (NoScriptError for an
unknown script), not raised.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = Sequence[bytes | str | int | float]


def pack(commands: Sequence[Command]) -> bytes:
    """Commands in RESP: arrays of bulk strings."""
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            kind = type(arg)
            if kind is bytes:
                data = cast(bytes, arg)
            elif kind is str:
                data = cast(str, arg).encode()
            elif kind is int or kind is float:
                data = repr(arg).encode()
            else:
                raise DataError(f"cannot send a {kind.__name__} to Redis")
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def supports(url: str) -> bool:
    """TCP and Unix sockets; other schemes (TLS) stay with redis-py."""
    kind = parse_url(url).get("connection_class", Connection)
    return kind in (Connection, UnixDomainSocketConnection)


@dataclass(slots=True)
class _Waiter:
    future: asyncio.Future[list[Any]]
    count: int
    replies: list[Any] = field(default_factory=list)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        self.waiters: collections.deque[_Waiter] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.said = ""  # an error Redis sent unasked before closing (e.g. max clients)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                if not self.waiters:
                    if isinstance(reply, ResponseError):
                        self.said = str(reply)[:200]
                    raise InvalidResponse("a reply nobody asked for")
                waiter = self.waiters[0]
                if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
                    reply = NoScriptError(str(reply))
                waiter.replies.append(reply)
                if len(waiter.replies) == waiter.count:
                    self.waiters.popleft()
                    if not waiter.future.done():  # else: its caller was cancelled
                        waiter.future.set_result(waiter.replies)
        except InvalidResponse as exc:
            self.fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_waiters(self.closed())

    def closed(self) -> RedisConnectionError:
        said = f": {self.said}" if self.said else ""
        return RedisConnectionError(f"Redis closed the connection{said}")

    def fail(self, exc: Exception) -> None:
        """Out of step or too slow: every waiter fails and the connection goes."""
        self.lost = True
        self._fail_waiters(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail_waiters(self, exc: Exception) -> None:
        waiters, self.waiters = self.waiters, collections.deque()
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(exc)

    def send(self, payload: bytes, count: int) -> asyncio.Future[list[Any]]:
        if self.lost or self.transport is None or self.transport.is_closing():
            raise self.closed()  # (uvloop would raise RuntimeError on the write)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.waiters.append(_Waiter(future, count))
        self.transport.write(payload)
        return future


class RespLink:
    """One lazily made connection to the Redis of `url`, remade after it breaks."""

    def __init__(self, url: str, timeout: float) -> None:
        options = parse_url(url)
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "localhost")
        self._port: int = int(options.get("port", 6379))
        hello: list[Command] = []
        if options.get("password") is not None:
            user = options.get("username")
            auth = ["AUTH", user, options["password"]] if user else ["AUTH", options["password"]]
            hello.append(auth)
        if int(options.get("db", 0)):
            hello.append(["SELECT", int(options["db"])])
        self._hello = pack(hello) if hello else b""
        self._hello_count = len(hello)
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._closed = False

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies, in order; an error reply is its exception, in its place."""
        if not commands:
            return []
        payload = pack(commands)
        return await self._exchange(await self._connection(), payload, len(commands))

    async def _exchange(self, protocol: _Protocol, payload: bytes, count: int) -> list[Any]:
        future = protocol.send(payload, count)
        timer = asyncio.get_running_loop().call_later(self._timeout, self._timed_out, protocol)
        try:
            return await future
        finally:
            timer.cancel()

    def _timed_out(self, protocol: _Protocol) -> None:
        protocol.fail(RedisTimeoutError(f"no reply from Redis within {self._timeout:g}s"))

    async def _connection(self) -> _Protocol:
        if self._closed:
            raise RedisConnectionError("the limiter's Redis link is closed")
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            return protocol
        self._protocol = None
        if self._connecting is None:  # one connect at a time; others wait for it
            task = asyncio.ensure_future(self._connect())
            self._connecting = task
            task.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, task: asyncio.Future[_Protocol]) -> None:
        self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        protocol = task.result()
        if self._closed and protocol.transport is not None:
            protocol.transport.close()  # closed while connecting
        else:
            self._protocol = protocol

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            if self._path is not None:
                made = loop.create_unix_connection(_Protocol, self._path)
            else:
                made = loop.create_connection(_Protocol, self._host, self._port)
            _, protocol = await asyncio.wait_for(made, self._timeout)
        except TimeoutError:
            raise RedisTimeoutError("connecting to Redis timed out") from None
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc.strerror or exc}") from None
        if self._hello:
            for reply in await self._exchange(protocol, self._hello, self._hello_count):
                if isinstance(reply, Exception):
                    protocol.fail(RedisConnectionError("closed after a failed AUTH or SELECT"))
                    raise reply
        return protocol

    async def aclose(self) -> None:
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
