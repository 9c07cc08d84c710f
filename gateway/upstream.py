"""The one pooled httpx.AsyncClient towards the workers: timeouts, header hygiene, error mapping.

httpx errors are translated into the GatewayError tree here and nowhere else.
"""

from __future__ import annotations

import httpx

from gateway.errors import GatewayError, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
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

    def _url(self, worker: Worker, path: str) -> httpx.URL:
        key = (worker.url, path)
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = httpx.URL(worker.url + path)
        return url

    async def open(self, worker: Worker, path: str, body: bytes, request_id: str) -> httpx.Response:
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
            ],
        )
        try:
            return await self._transport.handle_async_request(request)
        except httpx.HTTPError as exc:
            raise translate(exc, worker) from None

    async def probe(self, url: str, seconds: float) -> bool:
        """True when GET `url` answers 200 within `seconds` (health checks; never a completion)."""
        try:
            response = await self._client.get(url, timeout=seconds)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()


def translate(exc: httpx.HTTPError, worker: Worker) -> GatewayError:
    """Name what went wrong with `worker`, without request content."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return UpstreamUnavailable(f"worker {worker.name} for model {worker.model} is unreachable")
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamUnavailable(f"no free connection to worker {worker.name}")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"worker {worker.name} timed out")
    return UpstreamFailed(f"connection to worker {worker.name} failed: {type(exc).__name__}")
