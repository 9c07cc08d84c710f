"""GET requests to workers off the hot path: health probes, /metrics scrapes, /ready checks.

httpx serves here (its API is the simplest for a bounded GET); completions go through the
relay's own HTTP/1.1 client (relay/upstream.py over relay/h1.py), measured several times cheaper.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Protocol

import httpx


class Verdict(enum.Enum):
    """What one health probe saw."""

    UP = "up"  # 200 in time
    DOWN = "down"  # refused, reset, or any other status: the worker says it is not serving
    SLOW = "slow"  # no answer in time: maybe down, maybe only busy (a loaded host, a GC pause)


class Probe(Protocol):
    async def fetch(self, url: str, seconds: float) -> bytes | None:
        """The body of GET `url` when it answers 200 within `seconds`, else None."""
        ...

    async def check(self, url: str, seconds: float) -> Verdict:
        """GET `url`: did it answer 200 in time, fail, or not answer in time?"""
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

    async def check(self, url: str, seconds: float) -> Verdict:
        try:
            async with asyncio.timeout(seconds):
                response = await self._client.get(url, timeout=seconds)
        except (TimeoutError, httpx.TimeoutException):
            return Verdict.SLOW
        except (httpx.HTTPError, OSError):
            return Verdict.DOWN
        return Verdict.UP if response.status_code == 200 else Verdict.DOWN

    async def aclose(self) -> None:
        await self._client.aclose()
