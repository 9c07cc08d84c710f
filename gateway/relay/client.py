"""Writing the answer to the client: ASGI messages for the head (held to leave in one write with
the body's first piece: ClientLink.hold) and the end, stream chunks straight to the connection
(ClientLink.write_chunk: measured cheaper per chunk than an ASGI message each), the ratelimit
headers, and the write deadline for a client that stops reading (only armed while the
connection's send buffer is full, so a reading client costs one check per write)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.types import Message, Scope, Send

from gateway.errors import Dialect, GatewayError
from gateway.record import RequestRecord
from gateway.relay.disconnect import ClientGone, DisconnectWatch
from gateway.server.protocol import CLIENT_EXTENSION


class ClientLink(Protocol):
    """What the server layer offers about a client connection (server/protocol.py)."""

    def write_paused(self) -> bool:
        """True while the connection's send buffer is full: a write would wait for the client."""
        ...

    async def drain(self) -> None:
        """Wait until the send buffer has room again (or the client is gone)."""
        ...

    def chunked(self) -> bool:
        """True while body pieces of the started answer may go through write_chunk."""
        ...

    def write_chunk(self, data: bytes) -> bool:
        """Write one non-empty piece of the answer now; False when the client is gone."""
        ...

    def hold(self) -> None:
        """Keep the answer's next writes (its head) to send them with what follows."""
        ...

    def release(self) -> None:
        """Write what hold() kept."""
        ...

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` once when the connection closes (None: no longer)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once, unsent bytes and all."""
        ...


def client_link(scope: Scope) -> ClientLink | None:
    extension: Any = scope.get("extensions", {}).get(CLIENT_EXTENSION)
    return extension.get("link") if isinstance(extension, dict) else None


class ClientWriter:
    __slots__ = ("_extra", "_link", "_record", "_send", "_watch", "_write_timeout", "started")

    def __init__(  # noqa: PLR0917 (the one call site names them)
        self,
        send: Send,
        link: ClientLink | None,
        write_timeout: float,
        record: RequestRecord,
        watch: DisconnectWatch,
        extra_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._send = send
        self._link = link
        self._write_timeout = write_timeout
        self._record = record
        self._watch = watch
        self._extra = extra_headers  # e.g. x-ratelimit-*
        self.started = False

    async def start(
        self, status: int, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> None:
        headers = [*headers, *self._extra]
        if length is not None:
            headers.append((b"content-length", str(length).encode()))
        self.started = True
        if self._link is not None:
            # The head leaves with the body's first piece, in one write (body() releases it).
            self._link.hold()
        await self._emit({"type": "http.response.start", "status": status, "headers": headers})

    async def body(self, body: bytes, *, final: bool = False) -> None:
        link = self._link
        if not final and link is not None and link.chunked():
            # A stream's chunk: straight to the connection.
            if not body:
                return  # an empty chunk would end the answer
            if link.write_paused():
                await self._bounded(link.drain())
            if not link.write_chunk(body):
                raise ClientGone
            return
        if final:
            self._watch.finished = True
        await self._emit({"type": "http.response.body", "body": body, "more_body": not final})
        if link is not None:
            link.release()

    def chunk_link(self) -> ClientLink | None:
        """The connection a started chunked answer's pieces may be written to directly, if the
        server offers one (relay/pump.py)."""
        link = self._link
        return link if link is not None and link.chunked() else None

    async def drain(self) -> None:
        """Wait for the client to read what is buffered, within the write deadline (ClientGone
        when it does not)."""
        if self._link is not None:
            await self._bounded(self._link.drain())

    async def error(self, exc: GatewayError, dialect: Dialect = "openai") -> None:
        """The error as the whole answer: its status, headers and envelope."""
        status, body = exc.answer(dialect)
        headers = [(b"content-type", b"application/json")]
        headers += [(k.encode(), v.encode()) for k, v in exc.headers.items()]
        await self.start(status, headers, len(body))
        await self.body(body, final=True)

    async def _emit(self, message: Message) -> None:
        link = self._link
        if link is not None and link.write_paused():
            await self._bounded(self._send(message))
        else:
            try:
                await self._send(message)
            except OSError as exc:
                raise ClientGone from exc

    async def _bounded(self, write: Awaitable[None]) -> None:
        """A write that waits for the client to read, within the write deadline."""
        link = self._link
        try:
            async with asyncio.timeout(self._write_timeout):
                await write
        except TimeoutError:
            # The client stopped reading: its fault, not the worker's. Drop it (a close would
            # wait for the full buffer to drain); the relay then ends as if it had left.
            self._record.error_code = "client_write_timeout"
            if link is not None:
                link.abort()
            raise ClientGone from None
        except OSError as exc:
            raise ClientGone from exc
