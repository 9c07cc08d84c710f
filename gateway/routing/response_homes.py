"""Which worker holds each stored Responses API response: a response made with `store` lives in
that worker's memory only, so GET /v1/responses/{id}, .../cancel and a later request naming it
as `previous_response_id` must go back there, from any gateway replica.

Kept in Redis with a TTL when it is configured (every replica sees it), else in this process;
on a Redis error this process carries on with its own record.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger("gateway.routing")

Home = tuple[str, str]  # (model, worker name)


class ResponseHomes(Protocol):
    async def remember(self, response_id: str, model: str, worker: str) -> None: ...

    async def find(self, response_id: str) -> Home | None: ...

    async def aclose(self) -> None: ...


class LocalHomes:
    """In this process, newest `capacity` entries, each for `ttl` seconds."""

    def __init__(self, ttl: float, capacity: int = 100_000) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._homes: OrderedDict[str, tuple[float, Home]] = OrderedDict()

    async def remember(self, response_id: str, model: str, worker: str) -> None:
        self._homes[response_id] = (time.monotonic() + self._ttl, (model, worker))
        self._homes.move_to_end(response_id)
        while len(self._homes) > self._capacity:
            self._homes.popitem(last=False)

    async def find(self, response_id: str) -> Home | None:
        entry = self._homes.get(response_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._homes[response_id]
            return None
        return entry[1]

    async def aclose(self) -> None:
        return None


class RedisHomes:
    def __init__(self, url: str, timeout: float, ttl: float, prefix: str = "gw:response:") -> None:
        self._redis = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
        )
        self._ttl = max(int(ttl), 1)
        self._prefix = prefix
        self._local = LocalHomes(ttl)
        self._failing = False

    async def remember(self, response_id: str, model: str, worker: str) -> None:
        await self._local.remember(response_id, model, worker)
        try:
            await self._redis.set(self._prefix + response_id, f"{model}\n{worker}", ex=self._ttl)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return
        self._failing = False

    async def find(self, response_id: str) -> Home | None:
        try:
            value = await self._redis.get(self._prefix + response_id)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return await self._local.find(response_id)
        self._failing = False
        if value is None:
            return await self._local.find(response_id)
        text = value.decode() if isinstance(value, bytes) else str(value)
        model, _, worker = text.partition("\n")
        return model, worker

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning(
                "response homes: Redis unavailable (%s); this replica's own record only",
                type(exc).__name__,
            )
        self._failing = True

    async def aclose(self) -> None:
        await self._redis.aclose()
