"""uvicorn's httptools protocol, hardened: a bounded request head (bytes and header count),
deadlines to receive the head and the body, a cap on open connections, and every answer the
server layer gives itself (malformed HTTP, 431, 408, 503 at the cap) in the OpenAI envelope.

The limits reach each connection through the app's lifespan state (`server_limits`), so every
gateway process (one or many) uses the ones its settings say.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.errors import (
    GatewayError,
    HeadersTooLarge,
    InvalidRequest,
    RequestTimeout,
    ServerOverloaded,
)

log = logging.getLogger("gateway.server")
LIMITS_KEY = "server_limits"  # where the lifespan state carries the limits
CLIENT_EXTENSION = "gateway.client"  # scope["extensions"][CLIENT_EXTENSION]["link"]: a ClientLink


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_header_bytes: int  # request line + headers
    max_headers: int
    header_timeout: float  # seconds to receive a request's head (from the connection or the
    # previous answer)
    body_timeout: float  # seconds to receive the body once the head is in
    max_connections: int  # open connections per process


_DEFAULT = ServerLimits(65536, 100, 10.0, 60.0, 16384)


def _answer(error: GatewayError) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection."""
    body = error.body()
    head = (
        f"HTTP/1.1 {error.status} {_REASONS.get(error.status, 'Error')}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class _Held:
    """Stands in for the connection's transport in uvicorn's cycle while an answer's head is
    held: its writes are kept, to go out with what follows in one write."""

    __slots__ = ("parts", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def flush(self) -> None:
        parts = self.parts
        if parts and not self.transport.is_closing():
            self.parts = []
            if len(parts) == 1:
                self.transport.write(parts[0])
            else:  # one write, without copying a large body into a new buffer
                self.transport.writelines(parts)


class ClientLink:
    """A request's view of its connection: is the send buffer full, write a piece of a chunked
    answer straight to the socket, hold the answer's head to send it with what follows, be told
    when the client leaves, drop it now."""

    __slots__ = ("_held", "_on_lost", "_protocol", "cycle")

    def __init__(self, protocol: HttpToolsProtocol) -> None:
        self._protocol = protocol
        self.cycle: RequestResponseCycle | None = None  # set once the request's head is in
        self._on_lost: Callable[[], None] | None = None
        self._held: _Held | None = None

    def hold(self) -> None:
        """Keep what is written from now (the answer's head) until release(): the head and the
        first piece of the body then leave in one write, one syscall and one segment instead of
        two. Released at the latest when the loop next runs its ready callbacks, so a head is
        never kept waiting for a body that comes later."""
        cycle = self.cycle
        protocol = self._protocol
        if cycle is None or self._held is not None or protocol.flow.write_paused:
            return
        held = self._held = _Held(protocol.transport)
        cycle.transport = cast(asyncio.Transport, held)
        protocol.loop.call_soon(self.release)

    def release(self) -> None:
        """Write what hold() kept, in one write."""
        held = self._unhold()
        if held is not None:
            held.flush()

    def _unhold(self) -> _Held | None:
        held, self._held = self._held, None
        if held is not None and self.cycle is not None:
            self.cycle.transport = held.transport
        return held

    def write_paused(self) -> bool:
        return bool(self._protocol.flow.write_paused)

    async def drain(self) -> None:
        """Wait until the send buffer is below its high-water mark (or the client is gone)."""
        await self._protocol.flow.drain()

    def chunked(self) -> bool:
        """True while the answer has started with chunked framing and is not complete: its
        body pieces may then go through write_chunk."""
        cycle = self.cycle
        return (
            cycle is not None
            and cycle.response_started
            and not cycle.response_complete
            and bool(cycle.chunked_encoding)
            and cycle.scope["method"] != "HEAD"
        )

    def write_chunk(self, data: bytes) -> bool:
        """One non-empty piece of the answer as a chunk, written now (what uvicorn's ASGI send
        does, without the message dict and the checks per piece). False: the client is gone."""
        cycle = self.cycle
        if cycle is None or cycle.disconnected:
            return False
        held = self._held
        if held is None:
            self._protocol.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:  # behind the held head, in the same write
            held.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.release()
        return True

    def on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` once when the connection closes (None: no longer)."""
        self._on_lost = callback

    def lost(self) -> None:
        callback, self._on_lost = self._on_lost, None
        if callback is not None:
            callback()

    def abort(self) -> None:
        self._unhold()  # what it held is dropped with the connection
        self._protocol.transport.abort()


class GatewayHttpProtocol(HttpToolsProtocol):
    """One client connection."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = self.app_state.get(LIMITS_KEY)
        self.limits: ServerLimits = limits if isinstance(limits, ServerLimits) else _DEFAULT
        self._raw_head = 0  # bytes received while a head is incomplete (however it is split)
        self._head_size = 0  # the head's exact size, from the parser: url, names, values
        self._header_count = 0
        self._in_head = True
        self._deadline: asyncio.TimerHandle | None = None
        self._links: list[ClientLink] = []  # of requests on this connection not yet answered

    # --- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            log.warning(
                "open connections at the cap (%d): refusing one", self.limits.max_connections
            )
            self._refuse(
                ServerOverloaded("The gateway has too many open connections; retry shortly.")
            )
            return
        self._arm(self.limits.header_timeout, "header")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        links, self._links = self._links, []
        for link in links:
            link.lost()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._raw_head += len(data)
        super().data_received(data)
        # Still no end of the head after more than the limit: refuse before the parser buffers
        # any more of it (it joins a long header's pieces over and over).
        if self._in_head and self._raw_head > self.limits.max_header_bytes:
            self._refuse(_head_too_large(self.limits))

    def send_400_response(self, msg: str) -> None:
        self._refuse(InvalidRequest("Malformed HTTP request."))

    # --- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_size = self._header_count = 0
        # The relay writes stream chunks through it, learns there when the client leaves, and
        # drops a client that stopped reading.
        link = ClientLink(self)
        self._links.append(link)
        self.scope["extensions"] = {CLIENT_EXTENSION: {"link": link}}

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        if self._header_count <= self.limits.max_headers:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._raw_head = 0
        self._disarm()
        limits = self.limits
        if self._header_count > limits.max_headers or self._head_size > limits.max_header_bytes:
            self._refuse(_head_too_large(limits))
            raise httptools.HttpParserCallbackError  # stop parsing this connection
        self._arm(limits.body_timeout, "body")  # disarmed once the whole body is in
        super().on_headers_complete()
        if self._links:
            self._links[-1].cycle = self.cycle

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._links:
            self._links.pop(0)  # answers complete in order
        if not self.transport.is_closing():
            self._arm(self.limits.header_timeout, "header")  # for the next request's head

    # --- helpers ------------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, what: str) -> None:
        self._deadline = None
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # mid-answer: nothing more can be said in order
            return
        seconds = self.limits.header_timeout if what == "header" else self.limits.body_timeout
        part = "headers" if what == "header" else "body"
        self._refuse(RequestTimeout(f"The request's {part} did not arrive within {seconds:g}s."))

    def _refuse(self, error: GatewayError) -> None:
        """Answer with the error and close; a request already in the app is cut off."""
        self._disarm()
        for link in self._links:  # a head held back goes first, in order
            link.release()
        if not self.transport.is_closing():
            self.transport.write(_answer(error))
            self.transport.close()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()


def _head_too_large(limits: ServerLimits) -> HeadersTooLarge:
    return HeadersTooLarge(
        f"The request's headers are larger than {limits.max_header_bytes} bytes or more than "
        f"{limits.max_headers} fields."
    )
