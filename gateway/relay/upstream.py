"""The one client towards workers for relayed requests: a pooled aiohttp session (its C parser
and connection pool measured several times cheaper per request than httpx's), header hygiene,
the single mapping of its errors onto the GatewayError tree, and retries.

Retries happen here and nowhere else: only while nothing has reached the client, only on
another worker, within a number of attempts and a time budget (tenacity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay
from yarl import URL

from gateway.errors import (
    GatewayError,
    UpstreamFailed,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_error_from_body,
)
from gateway.request import RESPONSES_PREFIX
from gateway.routing.registry import Worker

# The worker to try next after a retryable failure of the given one; None: there is none.
Switch = Callable[[Worker, GatewayError], Worker | None]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A POST to a worker: the path, the body as the client sent it (or amended), the request
    id and any further headers (e.g. traceparent)."""

    path: str
    body: bytes
    request_id: str
    headers: Sequence[tuple[str, str]] = ()
    method: str = "POST"
    content_type: str = "application/json"  # multipart uploads keep the client's (boundary)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int  # in all, the first included
    budget: float  # seconds all retries of one request may take


def failure(exc: aiohttp.ClientError | TimeoutError, worker: Worker) -> GatewayError:
    """Name what went wrong with `worker`, without request content: the one translation of the
    client library's errors."""
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        # Nothing was sent (refused, unresolvable, no connection in time): another may serve.
        return UpstreamUnavailable(f"worker {worker.name} for model {worker.model} is unreachable")
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"worker {worker.name} timed out")
    return UpstreamFailed(f"connection to worker {worker.name} failed: {type(exc).__name__}")


class UpstreamResponse:
    """A worker's answer whose status and headers have arrived; its body is read on demand."""

    __slots__ = ("_response", "_worker", "content_type", "status")

    def __init__(self, response: aiohttp.ClientResponse, worker: Worker) -> None:
        self._response = response
        self._worker = worker
        self.status = response.status
        self.content_type: str = response.headers.get("content-type", "application/json")

    async def read(self, limit: int) -> bytes:
        """The whole body; UpstreamInvalid when it is larger than `limit` bytes (refused before
        it is buffered whole)."""
        response = self._response
        length = response.content_length
        try:
            if length is not None and length <= limit:
                return await response.read()  # the common case: one read of a known size
            if length is not None:
                raise _too_large(self._worker, limit)
            chunks, size = [], 0
            while chunk := await response.content.readany():
                size += len(chunk)
                if size > limit:
                    raise _too_large(self._worker, limit)
                chunks.append(chunk)
            return b"".join(chunks)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise failure(exc, self._worker) from None

    async def read_chunk(self) -> bytes:
        """Whatever of the body has arrived (waiting for something); b"" at its end."""
        try:
            return await self._response.content.readany()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise failure(exc, self._worker) from None

    def close(self) -> None:
        # An unfinished body closes the connection instead of returning it to the pool: the
        # worker sees the socket close and aborts the generation (vLLM frees its KV cache).
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


def _too_large(worker: Worker, limit: int) -> UpstreamInvalid:
    return UpstreamInvalid(
        f"worker {worker.name} answered with more than {limit} bytes", violation="too_large"
    )


class Upstream:
    def __init__(self, connect_timeout: float, max_connections: int, retry: RetryPolicy) -> None:
        # Opening a connection is always bounded; reads are bounded by the relay's own
        # first-byte, idle and total deadlines.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout
        )
        self._max_connections = max_connections
        self._retry = retry
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[tuple[str, str], URL] = {}

    def _open_session(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop, as aiohttp requires.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, keepalive_timeout=30.0
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept-Encoding"),
                trust_env=False,  # no proxy variables or .netrc: worker URLs come from models.yaml
            )
        return self._session

    def _url(self, worker: Worker, path: str) -> URL:
        key = (worker.url, path)
        url = self._urls.get(key)
        if url is None:
            url = URL(worker.url + path, encoded=True)
            if not path.startswith(RESPONSES_PREFIX):  # the table's paths, not every id's
                self._urls[key] = url
        return url

    async def open(self, worker: Worker, request: UpstreamRequest) -> UpstreamResponse:
        """Send `request` to the worker and return once its status and headers have arrived.
        A worker's 503 (it turned the request away) is raised, so another may take it."""
        headers = [
            ("Content-Type", request.content_type),
            ("Accept-Encoding", "identity"),
            ("X-Request-Id", request.request_id),
            *request.headers,
        ]
        try:
            response = await self._open_session().request(
                request.method,
                self._url(worker, request.path),
                data=request.body,
                headers=headers,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise failure(exc, worker) from None
        answer = UpstreamResponse(response, worker)
        if answer.status == 503:
            try:
                refusal = await answer.read(1 << 16)
            finally:
                answer.close()
            raise upstream_error_from_body(503, refusal)
        return answer

    async def open_retrying(
        self, worker: Worker, switch: Switch, request: UpstreamRequest
    ) -> UpstreamResponse:
        """open(); when the worker is unreachable or answers 503, again on the worker that
        `switch` gives, while the policy allows. The happy path costs no more than open()."""
        try:
            return await self.open(worker, request)
        except GatewayError as exc:
            if not exc.retryable or self._retry.attempts < 2:
                raise
            failed, error = worker, exc
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._retry.attempts - 1)
            | stop_after_delay(self._retry.budget),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                replacement = switch(failed, error)
                if replacement is None:
                    break  # no other worker: the last failure is the answer
                failed = replacement
                try:
                    return await self.open(replacement, request)
                except GatewayError as exc:
                    error = exc
                    raise
        raise error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.retryable
