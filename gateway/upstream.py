"""The one pooled httpx.AsyncClient towards the workers: timeouts, header hygiene, error mapping.

httpx errors are translated into the GatewayError tree here and nowhere else.
"""

from __future__ import annotations

import httpx

from gateway.errors import GatewayError, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from gateway.routing.registry import Worker
from gateway.settings import Settings


class Upstream:
    def __init__(self, settings: Settings) -> None:
        # read=None: streams are bounded by the relay's own first-byte/idle/total deadlines.
        timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=None,
            write=settings.connect_timeout,
            pool=settings.connect_timeout,
        )
        limits = httpx.Limits(
            max_connections=settings.max_upstream_connections,
            max_keepalive_connections=settings.max_upstream_connections,
            keepalive_expiry=30.0,
        )
        # trust_env=False: no proxy variables or .netrc; upstream URLs come only from models.yaml.
        self._client = httpx.AsyncClient(
            timeout=timeout, limits=limits, follow_redirects=False, trust_env=False
        )

    async def open(self, worker: Worker, path: str, body: bytes, request_id: str) -> httpx.Response:
        """POST `body` to the worker and return once its status and headers have arrived."""
        request = self._client.build_request(
            "POST",
            worker.url + path,
            content=body,
            headers={
                "content-type": "application/json",
                "accept-encoding": "identity",
                "x-request-id": request_id,
            },
        )
        try:
            return await self._client.send(request, stream=True)
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
