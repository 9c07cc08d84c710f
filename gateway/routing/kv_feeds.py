"""Precise mode's subscriptions: one task per worker that finds the worker's KV-cache event
publisher (GET /kv_event_sources), follows it, and hands the events to its model's index."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import zmq
import zmq.asyncio

from gateway.routing.cache_aware import PrefixRouting
from gateway.routing.kv_events import follow, zmq_endpoint
from gateway.routing.probe import Probe
from gateway.routing.registry import Registry, Worker

log = logging.getLogger("gateway.prefix")

_LOOK_AGAIN = 10.0  # seconds before asking again a worker that publishes no events (yet)


class KvEventFeeds:
    def __init__(self, registry: Registry, probe: Probe, timeout: float) -> None:
        self._registry = registry
        self._probe = probe
        self._timeout = timeout
        self._context = zmq.asyncio.Context()
        self._tasks: dict[Worker, asyncio.Task[None]] = {}

    async def start(self) -> None:
        self.sync()

    def sync(self) -> None:
        """Follow the workers the registry has now (after a reload too), and no others."""
        wanted = {
            worker: route.prefix
            for route in self._registry.routes()
            if route.prefix is not None and route.prefix.exact is not None
            for worker in route.workers
        }
        for worker in [w for w in self._tasks if w not in wanted]:
            self._tasks.pop(worker).cancel()
        for worker, prefix in wanted.items():
            if worker not in self._tasks:
                self._tasks[worker] = asyncio.create_task(self._feed(worker, prefix))

    async def _feed(self, worker: Worker, prefix: PrefixRouting) -> None:
        slot = worker.slot
        while True:
            sources = await self._probe.fetch(worker.url + "/kv_event_sources", self._timeout)
            endpoint = zmq_endpoint(sources, worker.url) if sources is not None else None
            if endpoint is None:
                await asyncio.sleep(_LOOK_AGAIN)
                continue
            log.info("worker %s (%s): following its KV-cache events", worker.name, worker.model)
            try:
                await follow(endpoint, lambda events: prefix.events(slot, events), self._context)
            except zmq.ZMQError as exc:
                log.warning("worker %s: KV-cache events lost (%s)", worker.name, exc)
                await asyncio.sleep(_LOOK_AGAIN)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._context.term()
