"""The one client towards workers for relayed requests: a lean HTTP/1.1 client on httptools with
a keep-alive pool (relay/h1.py; measured cheaper per request and per streamed chunk than aiohttp,
which was several times cheaper than httpx), header hygiene, the single mapping of its errors
onto the GatewayError tree, and retries.

Retries happen here and nowhere else: only while nothing has reached the client and the worker
answered nothing usable (unreachable, closed without a byte of answer, or 503), only on another
worker, within a number of attempts and a time budget (tenacity).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

from gateway.errors import (
    GatewayError,
    UpstreamFailed,
    UpstreamInvalid,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_error_from_body,
)
from gateway.relay.h1 import BodyTooLarge, ConnectFailed, H1Error, H1Pool, H1Response, NoAnswer
from gateway.request import RESPONSES_PREFIX
from gateway.routing.registry import Worker

# The worker to try next after a retryable failure of the given one; None: there is none.
Switch = Callable[[Worker, GatewayError], Worker | None]


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """A request to a worker (a POST, or the client's method for a stored response): the path,
    the body as the client sent it (or amended), the request id and any further headers (e.g.
    traceparent), the method and the body's content type."""

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


def failure(exc: H1Error | TimeoutError, worker: Worker) -> GatewayError:
    """Name what went wrong with `worker`, without request content: the one translation of the
    client's errors."""
    if isinstance(exc, ConnectFailed):
        # Nothing was sent (refused, unresolvable, no connection in time): another may serve.
        return UpstreamUnavailable(f"worker {worker.name} for model {worker.model} is unreachable")
    if isinstance(exc, NoAnswer):
        # It accepted the connection and closed it without a byte of answer: a server going
        # down. Another may serve; at worst the dying one had begun the same prefill.
        return UpstreamUnavailable(
            f"worker {worker.name} for model {worker.model} closed the connection without answering"
        )
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"worker {worker.name} timed out")
    return UpstreamFailed(f"connection to worker {worker.name} failed: {type(exc).__name__}")


class UpstreamResponse:
    """A worker's answer whose status and headers have arrived; its body is read on demand."""

    __slots__ = ("_response", "_worker", "content_type", "read_chunk", "status")

    def __init__(self, response: H1Response, worker: Worker) -> None:
        self._response = response
        self._worker = worker
        self.status = response.status
        self.content_type: str = response.content_type
        # Streams read chunk after chunk: the client's own method, errors mapped in _chunk.
        self.read_chunk = self._chunk

    async def read(self, limit: int) -> bytes:
        """The whole body; UpstreamInvalid when it is larger than `limit` bytes (refused before
        it is buffered whole)."""
        try:
            return await self._response.read(limit)
        except BodyTooLarge:
            raise _too_large(self._worker, limit) from None
        except H1Error as exc:
            raise failure(exc, self._worker) from None

    async def _chunk(self) -> bytes:
        """Whatever of the body has arrived (waiting for something); b"" at its end."""
        try:
            return await self._response.read_chunk()
        except H1Error as exc:
            raise failure(exc, self._worker) from None

    def push(
        self, sink: Callable[[bytes], None], done: Callable[[GatewayError | None], None]
    ) -> None:
        """The rest of the body to `sink` as each read brings it, then `done` once: None at its
        end, else the failure named as by read_chunk (relay/h1.py's push)."""
        worker = self._worker

        def ended(exc: H1Error | None) -> None:
            done(None if exc is None else failure(exc, worker))

        self._response.push(sink, ended)

    def pause_reading(self) -> None:
        self._response.pause_reading()

    def resume_reading(self) -> None:
        self._response.resume_reading()

    def close(self) -> None:
        # An unfinished body closes the connection instead of returning it to the pool: the
        # worker sees the socket close and aborts the generation (vLLM frees its KV cache).
        self._response.close()


def _too_large(worker: Worker, limit: int) -> UpstreamInvalid:
    return UpstreamInvalid(
        f"worker {worker.name} answered with more than {limit} bytes", violation="too_large"
    )


_JSON = "application/json"
_JSON_HEADERS = b"Content-Type: application/json\r\nAccept-Encoding: identity\r\n"


class Upstream:
    def __init__(self, connect_timeout: float, max_connections: int, retry: RetryPolicy) -> None:
        # Opening a connection (or waiting for a free one) is always bounded; reads are bounded
        # by the relay's own first-byte, idle and total deadlines.
        self._pool = H1Pool(connect_timeout, max_connections, idle_timeout=30.0)
        self._retry = retry
        self._targets: dict[tuple[str, str], tuple[str, int, str]] = {}

    def _target(self, worker: Worker, path: str) -> tuple[str, int, str]:
        key = (worker.url, path)
        target = self._targets.get(key)
        if target is None:
            parts = urlsplit(worker.url)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            target = (host, port, parts.path.rstrip("/") + path)
            if not path.startswith(RESPONSES_PREFIX):  # the table's paths, not every id's
                self._targets[key] = target
        return target

    async def open(self, worker: Worker, request: UpstreamRequest) -> UpstreamResponse:
        """Send `request` to the worker and return once its status and headers have arrived.
        A worker's 503 (it turned the request away) is raised, so another may take it."""
        host, port, path = self._target(worker, request.path)
        fixed = (
            _JSON_HEADERS
            if request.content_type == _JSON
            else b"Content-Type: %s\r\nAccept-Encoding: identity\r\n"
            % request.content_type.encode("latin-1")
        )
        headers = fixed + _header_lines([("X-Request-Id", request.request_id), *request.headers])
        try:
            response = await self._pool.send(
                request.method, host, port, path, headers, request.body
            )
        except H1Error as exc:
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
        await self._pool.aclose()


def _header_lines(headers: Sequence[tuple[str, str]]) -> bytes:
    """`Name: value\\r\\n` lines; a CR or LF in a name or value is refused (no injection)."""
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers)
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers):
        raise ValueError("a header name or value holds CR or LF")
    return lines.encode("latin-1")


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.retryable
