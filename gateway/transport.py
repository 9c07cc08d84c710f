"""An httpx transport over aiohttp's connection pool and C HTTP parser.

httpx stays the client API; this transport does the socket work several times cheaper than
httpx's default one (see bench/RESULTS.md). aiohttp errors become httpx errors here, so
upstream.py's single translation into the GatewayError tree still applies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
from yarl import URL


class _AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:  # TimeoutError: aiohttp's `total`
            raise _as_httpx(exc) from exc

    async def read_any(self) -> bytes:
        """Whatever has arrived (waiting for something), b"" at the end of the body."""
        try:
            return await self._response.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _as_httpx(exc) from exc

    async def aclose(self) -> None:
        # An unfinished body closes the connection instead of returning it to the pool: the
        # worker sees the socket close and aborts the generation (vLLM frees its KV cache).
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


ChunkReader = Callable[[], Awaitable[bytes]]


def chunk_reader(response: httpx.Response) -> ChunkReader:
    """A function returning the body's next piece as it arrives (b"" at the end).

    For this transport's responses it reads aiohttp's buffer directly: a relayed stream pays
    for one await per chunk instead of httpx's stack of async generators.
    """
    stream = response.stream
    if isinstance(stream, _AiohttpStream):
        return stream.read_any
    chunks = response.aiter_raw()

    async def read() -> bytes:
        return await anext(chunks, b"")

    return read


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, *, connect_timeout: float, max_connections: int, keepalive: float) -> None:
        self._connect_timeout = connect_timeout
        # Applies to requests that bring no timeout of their own (the relay's: it keeps its own
        # first-byte, idle and total deadlines), so opening a connection is always bounded.
        self._default_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout
        )
        self._max_connections = max_connections
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop, as aiohttp requires.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=self._keepalive
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._default_timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                trust_env=False,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        timeout = request.extensions.get("timeout", {})
        try:
            response = await session.request(
                request.method,
                URL(str(request.url), encoded=True),
                data=request.content,
                headers=request.headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=timeout.get("read"),
                    connect=timeout.get("pool", self._connect_timeout),
                    sock_connect=timeout.get("connect", self._connect_timeout),
                )
                if timeout
                else self._default_timeout,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:  # TimeoutError: aiohttp's `total`
            raise _as_httpx(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_AiohttpStream(response),
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _as_httpx(exc: aiohttp.ClientError | TimeoutError) -> httpx.TransportError:
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(message)
    return httpx.ReadError(message)
