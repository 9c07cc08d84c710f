"""Admission: take a worker for a request now, or wait for one in a bounded per-model queue.

When every worker that takes traffic is saturated, requests wait. The queue is ordered by
priority class first (the key's `priority`, maybe lowered by the request; a lower number goes
first: interactive 0, standard 1, batch 2), then fair across keys within a class: released
round-robin by key. Waiting ages a class: it counts one class higher for every `aging` seconds
its oldest waiter has waited, so a lower class is never starved (batch ties interactive after
2 x aging and goes first after 3 x aging; a tie goes to the higher class).

When the queue is full, a newcomer pushes out the newest waiter of the lowest class present if
that class is lower than its own; within its own class, the newest waiter of the key holding
the most places (so one key cannot fill it); failing both, it is refused. Full → 503 at once
with a Retry-After from the recent drain rate; waited too long → 503; a client that leaves is
removed at once. No worker taking traffic at all → 503 `no_healthy_backend`.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field

from gateway.errors import NoHealthyBackend, ServerOverloaded
from gateway.observe.metrics import Metrics
from gateway.routing.policy import Choice, NoWorker, Preference, choose
from gateway.routing.registry import ModelRoute, Registry, Worker

_DRAIN_WINDOW = 64  # releases from the queue remembered to estimate its drain rate
_DRAIN_RECENT = 30.0  # seconds: older releases say nothing about the drain rate now


@dataclass(frozen=True, slots=True)
class QueueSettings:
    depth: int  # waiting requests per model (per gateway process); 0 = refuse at once
    timeout: float  # seconds a request may wait
    stale_after: float  # scraped worker load older than this is unknown
    aging: float = 5.0  # seconds of waiting that promote a class by one


DEFAULT_PRIORITY = 1  # standard (gateway.config.keys.PRIORITY_CLASSES)


@dataclass(eq=False, slots=True)
class Waiter:
    key: str
    prefer: Preference | None
    future: asyncio.Future[Choice]
    since: float = field(default=0.0)
    level: int = DEFAULT_PRIORITY


class ModelQueue:
    def __init__(self, route: ModelRoute, settings: QueueSettings, metrics: Metrics) -> None:
        self.route = route
        self._settings = settings
        # class -> key -> its waiters; a class's key order is its round-robin order
        self._levels: dict[int, dict[str, deque[Waiter]]] = {}
        self.size = 0
        self._released: deque[float] = deque(maxlen=_DRAIN_WINDOW)
        self._loop = asyncio.get_running_loop()
        self._depth_gauge = metrics.queue_depth.labels(route.name)
        self._wait_histogram = metrics.queue_wait.labels(route.name)
        self._rejections = metrics.queue_rejections
        self._depth_gauge.set(0)

    async def acquire(
        self, key: str, prefer: Preference | None, priority: int = DEFAULT_PRIORITY
    ) -> Choice:
        """A worker with a slot taken for this request (give it back with release())."""
        now = self._loop.time()
        try:
            choice = choose(self.route, now, self._settings.stale_after, prefer=prefer)
        except NoWorker:
            raise self._no_backend(now) from None
        if choice is not None and not self.size:  # nobody is waiting ahead of this request
            return self._assign(choice, prefer)
        return await self._wait(Waiter(key, prefer, self._loop.create_future(), now, priority))

    def take_another(
        self, exclude: frozenset[Worker], prefer: Preference | None = None
    ) -> Choice | None:
        """For a retry: the least-loaded other worker taking traffic, even if saturated."""
        try:
            choice = choose(
                self.route,
                self._loop.time(),
                self._settings.stale_after,
                prefer=_only(prefer),
                exclude=exclude,
                allow_saturated=True,
            )
        except NoWorker:
            return None
        return self._assign(choice, prefer) if choice is not None else None

    def _assign(self, choice: Choice, prefer: Preference | None) -> Choice:
        """Take a slot on the chosen worker; it now gets the prompt's blocks in its cache."""
        worker = choice.worker
        worker.inflight += 1
        prefix = self.route.prefix
        if prefix is not None and prefer is not None and prefer.prefix:
            prefix.note(worker.model, worker.name, worker.slot, prefer.prefix, prefer.tag)
        return choice

    def release(self, worker: Worker) -> None:
        worker.inflight -= 1
        if self.size:
            self.pump()

    def pump(self) -> None:
        """Hand free workers to waiters, in fair order, while both last."""
        while self.size:
            now = self._loop.time()
            waiter = self._peek()
            if waiter.future.done():  # its client just left; it is on its way out
                self._pop(waiter)
                continue
            try:
                choice = choose(self.route, now, self._settings.stale_after, prefer=waiter.prefer)
            except NoWorker:
                self._fail_all(self._no_backend(now))
                return
            if choice is None:
                return
            self._pop(waiter)
            waiter.future.set_result(self._assign(choice, waiter.prefer))
            self._released.append(now)
            self._wait_histogram.observe(now - waiter.since)

    # --- the queue ---------------------------------------------------------------------------

    async def _wait(self, waiter: Waiter) -> Choice:
        self._push(waiter)
        self.pump()  # a worker may be free with others still ahead: serve them in order
        try:
            async with asyncio.timeout(self._settings.timeout):
                return await waiter.future
        except BaseException as exc:
            self._abandon(waiter)
            if not isinstance(exc, TimeoutError):
                raise  # pushed out, no backend left, or the client went away
        self._rejections.labels(self.route.name, "timeout").inc()
        raise ServerOverloaded(
            f"The model `{self.route.name}` is at capacity: the request waited "
            f"{self._settings.timeout:g}s in the queue.",
            headers={"retry-after": str(self._retry_after())},
        )

    def _abandon(self, waiter: Waiter) -> None:
        future = waiter.future
        if future.done() and not future.cancelled() and future.exception() is None:
            # It was given a worker just as it timed out or its client left: give it back.
            self.release(future.result().worker)
            return
        if not future.done():
            future.cancel()
        self._remove(waiter)

    def _push(self, waiter: Waiter) -> None:
        if self.size >= self._settings.depth:
            self._make_room(waiter)
        level = self._levels.setdefault(waiter.level, {})
        level.setdefault(waiter.key, deque()).append(waiter)
        self.size += 1
        self._depth_gauge.set(self.size)

    def _make_room(self, newcomer: Waiter) -> None:
        if not self._levels:
            self._rejections.labels(self.route.name, "full").inc()
            raise self._full()
        lowest = max(self._levels)  # the lowest class present
        if lowest > newcomer.level:  # a higher class pushes out the lowest class's newest
            waiters = self._levels[lowest].values()
            victim = max((queue[-1] for queue in waiters), key=lambda w: w.since)
        elif lowest == newcomer.level:  # same class: the newest of the key holding the most
            by_key = self._levels[lowest]
            mine = len(by_key.get(newcomer.key, ()))
            biggest = max(by_key, key=lambda k: len(by_key[k]))
            if len(by_key[biggest]) <= mine + 1:
                self._rejections.labels(self.route.name, "full").inc()
                raise self._full()
            victim = by_key[biggest][-1]
        else:
            self._rejections.labels(self.route.name, "full").inc()
            raise self._full()
        self._remove(victim)
        self._rejections.labels(self.route.name, "full").inc()
        if not victim.future.done():
            victim.future.set_exception(self._full())

    def _full(self) -> ServerOverloaded:
        return ServerOverloaded(
            f"The model `{self.route.name}` is at capacity and its queue is full; retry later.",
            headers={"retry-after": str(self._retry_after())},
        )

    def _peek(self) -> Waiter:
        """The next waiter: the class that goes first (aged), then its round-robin turn."""
        levels = self._levels
        if len(levels) == 1:
            by_key = next(iter(levels.values()))
        else:
            now, aging = self._loop.time(), self._settings.aging
            best: tuple[int, int] | None = None
            for level, keys in levels.items():
                oldest = min(queue[0].since for queue in keys.values())
                rank = (level - int((now - oldest) / aging), level)
                if best is None or rank < best:
                    best = rank
            assert best is not None
            by_key = levels[best[1]]
        return by_key[next(iter(by_key))][0]

    def _pop(self, waiter: Waiter) -> None:
        """Take `waiter` (the head of its key's line) and send its key to the back of the round."""
        by_key = self._levels[waiter.level]
        waiters = by_key.pop(waiter.key)
        waiters.popleft()
        if waiters:
            by_key[waiter.key] = waiters
        elif not by_key:
            del self._levels[waiter.level]
        self.size -= 1
        self._depth_gauge.set(self.size)

    def _remove(self, waiter: Waiter) -> None:
        by_key = self._levels.get(waiter.level)
        waiters = by_key.get(waiter.key) if by_key is not None else None
        if by_key is None or waiters is None or waiter not in waiters:
            return
        waiters.remove(waiter)
        if not waiters:
            del by_key[waiter.key]
            if not by_key:
                del self._levels[waiter.level]
        self.size -= 1
        self._depth_gauge.set(self.size)

    def _fail_all(self, error: NoHealthyBackend) -> None:
        for by_key in self._levels.values():
            for waiters in by_key.values():
                for waiter in waiters:
                    if not waiter.future.done():
                        waiter.future.set_exception(error)
        self._levels.clear()
        self.size = 0
        self._depth_gauge.set(0)

    def _retry_after(self) -> int:
        """Seconds until the queue has drained at the recent rate (1..60)."""
        now = self._loop.time()
        recent = [t for t in self._released if now - t <= _DRAIN_RECENT]
        if len(recent) < 2:
            return 1
        span = now - recent[0]
        rate = len(recent) / span if span > 0 else math.inf
        return min(max(math.ceil((self.size + 1) / rate), 1), 60)

    def _no_backend(self, now: float) -> NoHealthyBackend:
        self._rejections.labels(self.route.name, "no_healthy_backend").inc()
        soonest = min((w.ejected_until for w in self.route.workers), default=now)
        seconds = max(math.ceil(soonest - now), 1)
        return NoHealthyBackend(
            f"No worker of model `{self.route.name}` is healthy right now; retry later.",
            headers={"retry-after": str(seconds)},
        )


class Dispatcher:
    """One ModelQueue per configured model."""

    def __init__(self, registry: Registry, settings: QueueSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._queues: dict[str, ModelQueue] = {}
        self.sync(registry)

    def sync(self, registry: Registry) -> None:
        """A queue for each model the registry has now. A removed model's queue is dropped:
        requests already holding it finish on its workers."""
        routes = {route.name: route for route in registry.routes()}
        for name in [name for name in self._queues if name not in routes]:
            del self._queues[name]
        for name, route in routes.items():
            if name not in self._queues:
                self._queues[name] = ModelQueue(route, self._settings, self._metrics)

    def queue(self, model: str) -> ModelQueue:
        return self._queues[model]

    def wake(self, route: ModelRoute) -> None:
        """Worker health or load changed: waiters may go now."""
        queue = self._queues.get(route.name)
        if queue is not None and queue.size:
            queue.pump()


def _only(prefer: Preference | None) -> Preference | None:
    """What of a preference binds a retry: the workers it is restricted to."""
    return Preference(only=prefer.only) if prefer is not None and prefer.only else None
