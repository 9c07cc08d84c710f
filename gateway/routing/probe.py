"""GET requests to workers off the hot path: health probes, /metrics scrapes, /ready checks.

httpx serves here (its API is the simplest for a bounded GET); completions go through the
relay's aiohttp session (relay/upstream.py), measured several times cheaper per request.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import httpx


class Probe(Protocol):
    async def fetch(self, url: str, seconds: float) -> bytes | None:
        """The body of GET `url` when it answers 200 within `seconds`, else None."""
        ...


class HttpProbe:
    def __init__(self) -> None:
        # trust_env=False: no proxy variables or .netrc; worker URLs come only from models.yaml.
        self._client = httpx.AsyncClient(follow_redirects=False, trust_env=False)

    async def fetch(self, url: str, seconds: float) -> bytes | None:
        try:
            async with asyncio.timeout(seconds):  # the whole exchange: a trickling body too
                response = await self._client.get(url, timeout=seconds)
        except (httpx.HTTPError, TimeoutError, OSError):
            return None
        return response.content if response.status_code == 200 else None

    async def aclose(self) -> None:
        await self._client.aclose()
