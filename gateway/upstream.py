"""The one pooled httpx.AsyncClient towards the workers: timeouts, header hygiene, error mapping,
and retries.

httpx errors are translated into the GatewayError tree here and nowhere else. Retries happen
here and nowhere else: only while nothing has reached the client, only on another worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay

from gateway.errors import (
    GatewayError,
    UpstreamFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_error_from_body,
)
from gateway.routing.registry import Worker
from gateway.settings import Settings
from gateway.transport import AiohttpTransport


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self._transport = AiohttpTransport(
            connect_timeout=settings.connect_timeout,
            max_connections=settings.max_upstream_connections,
            keepalive=30.0,
        )
        # For everything off the hot path (health probes). trust_env=False: no proxy variables
        # or .netrc; upstream URLs come only from models.yaml.
        self._client = httpx.AsyncClient(
            transport=self._transport, follow_redirects=False, trust_env=False
        )
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._attempts = settings.retry_attempts
        self._retry_budget = settings.retry_budget

    def _url(self, worker: Worker, path: str) -> httpx.URL:
        key = (worker.url, path)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = httpx.URL(worker.url + path)
        return url

    async def open(
        self,
        worker: Worker,
        path: str,
        body: bytes,
        request_id: str,
        *,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> httpx.Response:
        """POST `body` to the worker and return once its status and headers have arrived.

        The hot path builds the request with a parsed URL and raw headers and hands it straight
        to the transport: AsyncClient.send's auth, redirect and cookie machinery is not needed.
        """
        request = httpx.Request(
            "POST",
            self._url(worker, path),
            content=body,
            headers=[
                (b"content-type", b"application/json"),
                (b"accept-encoding", b"identity"),
                (b"x-request-id", request_id.encode()),
                *extra_headers,
            ],
        )
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise translate(exc, worker) from None
        if response.status_code == 503:  # the worker turned it away: another may take it
            try:
                body = await response.aread()
            except httpx.HTTPError as exc:
                raise translate(exc, worker) from None
            finally:
                await response.aclose()
            raise upstream_error_from_body(503, body)
        return response

    async def open_retrying(
        self,
        worker: Worker,
        switch: Callable[[Worker, GatewayError], Worker | None],
        path: str,
        body: bytes,
        request_id: str,
        *,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> httpx.Response:
        """open(), and when the worker is unreachable or answers 503, again on the worker that
        `switch(failed worker, error)` gives (None: no other), within the attempts and the time
        budget. The happy path costs nothing more than open()."""
        try:
            return await self.open(worker, path, body, request_id, extra_headers=extra_headers)
        except GatewayError as exc:
            if not exc.retryable or self._attempts < 2:
                raise
            failure = exc
        current = worker
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts - 1) | stop_after_delay(self._retry_budget),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                replacement = switch(current, failure)
                if replacement is None:
                    break
                current = replacement
                try:
                    return await self.open(
                        current, path, body, request_id, extra_headers=extra_headers
                    )
                except GatewayError as exc:
                    failure = exc
                    raise
        raise failure

    async def probe(self, url: str, seconds: float) -> bool:
        """True when GET `url` answers 200 within `seconds` (health checks; never a completion)."""
        return await self.fetch(url, seconds) is not None

    async def fetch(self, url: str, seconds: float) -> bytes | None:
        """The body of GET `url` when it answers 200 within `seconds`, else None."""
        try:
            response = await self._client.get(url, timeout=seconds)
        except (httpx.HTTPError, TimeoutError, OSError):  # a body slower than `seconds`, too
            return None
        return response.content if response.status_code == 200 else None

    async def aclose(self) -> None:
        await self._client.aclose()


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.retryable


def translate(exc: httpx.HTTPError, worker: Worker) -> GatewayError:
    """Name what went wrong with `worker`, without request content."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamUnavailable(f"worker {worker.name} for model {worker.model} is unreachable")
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamUnavailable(f"no free connection to worker {worker.name}")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"worker {worker.name} timed out")
    return UpstreamFailed(f"connection to worker {worker.name} failed: {type(exc).__name__}")
