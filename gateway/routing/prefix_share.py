"""Cache-aware routing decisions shared by the gateway replicas through Redis pub/sub: each
replica publishes the blocks it sent to a worker; every replica applies the others' to its own
prefix index, so two replicas send the same prefix to the same worker.

Nothing on the request path waits for Redis: decisions are batched and published by a task of
their own every few milliseconds, and a lost message only makes a routing hint less precise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.routing.registry import Registry

log = logging.getLogger("gateway.prefix")

_FLUSH_EVERY = 0.005  # seconds between batches while decisions arrive
_RECONNECT_AFTER = 1.0


class PrefixShare:
    def __init__(self, url: str, channel: str, registry: Registry, timeout: float) -> None:
        self._publisher = Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0
        )
        self._subscriber = Redis.from_url(url, socket_connect_timeout=timeout)
        self._channel = channel
        self._registry = registry
        self._me = os.urandom(8).hex()
        self._pending: list[tuple[str, str, Sequence[int], str | None]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._failing = False

    def publish(self, model: str, worker: str, hashes: Sequence[int], tag: str | None) -> None:
        """Queue a local decision for the others (the request path: no I/O here)."""
        self._pending.append((model, worker, hashes, tag))
        self._wake.set()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._send_batches()),
            asyncio.create_task(self._receive()),
        ]

    async def _send_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(_FLUSH_EVERY)  # let decisions gather
            batch, self._pending = self._pending, []
            if not batch:
                continue
            message = orjson.dumps({"from": self._me, "decisions": batch})
            try:
                await self._publisher.publish(self._channel, message)
            except (RedisError, OSError, TimeoutError) as exc:
                self._trouble(exc)  # the batch is dropped: the others route a little blinder
            else:
                self._recovered()

    async def _receive(self) -> None:
        while True:
            try:
                async with self._subscriber.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._apply(message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                self._trouble(exc)
                await asyncio.sleep(_RECONNECT_AFTER)

    def _apply(self, data: bytes) -> None:
        try:
            doc: Any = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(doc, dict) or doc.get("from") == self._me:
            return
        for decision in doc.get("decisions", ()):
            try:
                model, name, hashes, tag = decision
                route = self._registry.route(model)
                worker = route.worker(name) if route is not None else None
                if route is not None and route.prefix is not None and worker is not None:
                    blocks = [int(h) for h in hashes]
                    route.prefix.noted_elsewhere(worker.slot, blocks, tag if tag else None)
            except (TypeError, ValueError):
                continue  # not one of ours

    def _trouble(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning(
                "prefix sharing: Redis unavailable (%s); routing on local knowledge",
                type(exc).__name__,
            )
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            log.warning("prefix sharing: Redis is back")
        self._failing = False

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._publisher.aclose()
        await self._subscriber.aclose()
