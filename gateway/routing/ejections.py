"""Where worker ejections live: in Redis, so every gateway replica agrees and a new replica
starts with what the others know; in this process alone when there is no Redis (or it fails).

Ejection windows are kept as key TTLs, so replicas never compare their clocks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("gateway.health")


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float  # seconds of the first ejection
    max: float  # cap of the doubling
    reset: float  # seconds without an ejection after which the count starts again


class Ejections(Protocol):
    async def eject(self, worker_id: str) -> float:
        """Eject the worker (unless it already is) and return the seconds its window has left:
        the base window, doubled for each ejection in a row, up to the max."""
        ...

    async def remaining(self, worker_ids: Sequence[str]) -> list[float]:
        """Seconds of ejection left for each worker (0: not ejected)."""
        ...

    async def aclose(self) -> None: ...


class LocalEjections:
    """The same rules as eject.lua, for this process only."""

    def __init__(self, backoff: Backoff) -> None:
        self._backoff = backoff
        self._until: dict[str, float] = {}
        self._strikes: dict[str, tuple[int, float]] = {}  # id -> (count, forget after)

    async def eject(self, worker_id: str) -> float:
        now = time.monotonic()
        left = self._until.get(worker_id, 0.0) - now
        if left > 0:
            return left
        count, forget = self._strikes.get(worker_id, (0, 0.0))
        count = count + 1 if now < forget else 1
        seconds = min(self._backoff.base * 2.0 ** (count - 1), self._backoff.max)
        self._until[worker_id] = now + seconds
        self._strikes[worker_id] = (count, now + seconds + self._backoff.reset)
        return seconds

    async def remaining(self, worker_ids: Sequence[str]) -> list[float]:
        now = time.monotonic()
        return [max(self._until.get(w, 0.0) - now, 0.0) for w in worker_ids]

    async def aclose(self) -> None:
        return None


class RedisEjections:
    """Ejections in Redis; on a Redis error this process carries on with its own record."""

    def __init__(self, url: str, timeout: float, backoff: Backoff, prefix: str) -> None:
        self._redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
        )
        self._backoff = backoff
        self._prefix = prefix
        self._script = self._redis.register_script(
            (Path(__file__).parent / "eject.lua").read_text()
        )
        self._local = LocalEjections(backoff)
        self._failing = False

    def _key(self, worker_id: str) -> str:
        return f"{self._prefix}{{{worker_id}}}:ejected"

    async def eject(self, worker_id: str) -> float:
        ms_args = [
            int(v * 1000) for v in (self._backoff.base, self._backoff.max, self._backoff.reset)
        ]
        keys = [self._key(worker_id), f"{self._prefix}{{{worker_id}}}:strikes"]
        try:
            ms = await self._script(keys=keys, args=ms_args)
        except RedisError as exc:
            self._failed(exc)
            return await self._local.eject(worker_id)
        self._recovered()
        return int(ms) / 1000

    async def remaining(self, worker_ids: Sequence[str]) -> list[float]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for worker_id in worker_ids:
                    pipe.pttl(self._key(worker_id))
                replies = await pipe.execute()
        except RedisError as exc:
            self._failed(exc)
            return await self._local.remaining(worker_ids)
        self._recovered()
        return [max(int(ms), 0) / 1000 for ms in replies]

    def _failed(self, exc: RedisError) -> None:
        if not self._failing:
            log.warning("worker health: Redis unavailable (%s); deciding alone", type(exc).__name__)
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("worker health: Redis back; ejections shared again")
        self._failing = False

    async def aclose(self) -> None:
        await self._redis.aclose()
