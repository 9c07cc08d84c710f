"""Worker health: active probes of /health and /metrics on an interval (never a completion),
and passive ejection after consecutive failed exchanges.

Active: a worker whose /health does not answer 200 takes no traffic until it does. Its /metrics
give the saturation the policy reads, max(waiting / 5, kv_cache_usage / 0.8), timestamped so
stale numbers count as unknown. Passive: K failures in a row (unreachable, timeout, 5xx, broken
stream) eject the worker for a backoff that doubles on repeat (ejections.py shares it through
Redis); when the window ends it needs a good probe before it takes traffic again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from gateway.observe.metrics import Metrics
from gateway.routing.ejections import Ejections
from gateway.routing.probe import Probe, Verdict
from gateway.routing.registry import ModelRoute, Registry, Worker
from gateway.routing.scrape import scrape

log = logging.getLogger("gateway.health")


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval: float  # seconds between probes; 0 = no active probing
    timeout: float
    eject_after: int  # consecutive failures; 0 = never eject
    # /health probes in a row that get no answer in time before a worker is taken out (one
    # refusal or error status takes it out at once): a busy host is not a dead worker.
    slow_probes: int = 3

    @property
    def stale_after(self) -> float:
        """Scraped load older than this is unknown (a few missed probes)."""
        return 3 * self.interval + self.timeout if self.interval else math.inf


def worker_id(worker: Worker) -> str:
    return f"{worker.model}/{worker.name}"


class Health:
    """Keeps every Worker's `up`, `ejected_until` and `saturation` current."""

    def __init__(  # noqa: PLR0917 (each part is distinct and named at the one call site)
        self,
        registry: Registry,
        probe: Probe,
        ejections: Ejections,
        settings: HealthSettings,
        metrics: Metrics,
        on_change: Callable[[ModelRoute], None],
    ) -> None:
        self._registry = registry
        self._prober = probe
        self._ejections = ejections
        self.settings = settings
        self._metrics = metrics
        self._on_change = on_change  # wakes the model's admission queue
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        for worker in registry.workers():
            worker.up = not settings.interval  # probed workers start unknown: down until seen
            self._show(worker)

    def adopt(self, workers: list[Worker]) -> None:
        """Workers a reload (or a DNS answer) added: like those at start, down until a probe
        says otherwise; probed at once rather than at the next round, so they take traffic
        within a probe's time (a whole set replaced at once leaves no longer gap)."""
        for worker in workers:
            worker.up = not self.settings.interval
            self._show(worker)
        if self.settings.interval and workers:
            self._spawn(self._welcome(workers))

    async def _welcome(self, workers: list[Worker]) -> None:
        await asyncio.gather(*(self._probe(w) for w in workers))
        routes = {}
        for worker in workers:
            route = self._registry.route(worker.model)
            if route is not None and worker in route.workers:  # not removed meanwhile
                self._show(worker)
                routes[route.name] = route
        for route in routes.values():
            self._on_change(route)

    # --- passive -----------------------------------------------------------------------------

    def succeeded(self, worker: Worker) -> None:
        worker.failures = 0

    def failed(self, worker: Worker, kind: str) -> None:
        """An exchange with `worker` failed; `kind` labels gateway_upstream_errors_total."""
        self._metrics.upstream_errors.labels(worker.model, worker.name, kind).inc()
        if not worker.takes_traffic(self._loop.time()):
            return  # already out: requests still ending on it say nothing new
        worker.failures += 1
        limit = self.settings.eject_after
        if limit and worker.failures >= limit:
            # Out of rotation at once, in this same step (a crash fails many requests in one
            # loop pass: one ejection); the shared record then sets how long.
            worker.failures = 0
            worker.ejected_until = self._loop.time() + 1.0
            if self.settings.interval:
                worker.up = False  # back only after the window and a good probe
            self._spawn(self._eject(worker))

    async def _eject(self, worker: Worker) -> None:
        seconds = await self._ejections.eject(worker_id(worker))
        worker.ejected_until = self._loop.time() + seconds
        self._metrics.worker_ejections.labels(worker.model, worker.name).inc()
        log.warning(
            "worker %s (%s) ejected for %.1fs after consecutive failures",
            worker.name,
            worker.model,
            seconds,
        )
        self._show(worker)

    # --- active ------------------------------------------------------------------------------

    async def start(self) -> None:
        """One round before serving, so the first requests see what is known."""
        try:
            await self._round()
        except Exception:
            log.exception("first worker health round failed; the next rounds will retry")
        self._spawn(self._run())

    async def _run(self) -> None:
        # Without probing, still read the shared ejections every second.
        while True:
            await asyncio.sleep(self.settings.interval or 1.0)
            try:
                await self._round()
            except Exception:
                log.exception("worker health round failed; trying again next round")

    async def _round(self) -> None:
        workers = self._registry.workers()
        remaining = await self._ejections.remaining([worker_id(w) for w in workers])
        now = self._loop.time()
        for worker, seconds in zip(workers, remaining, strict=True):
            if seconds > 0 and now + seconds > worker.ejected_until:
                worker.ejected_until = now + seconds  # another replica ejected it
                if self.settings.interval:
                    worker.up = False
        if self.settings.interval:
            await asyncio.gather(*(self._probe(w) for w in workers))
        for worker in workers:
            self._show(worker)
        for route in self._registry.routes():
            self._on_change(route)

    async def _probe(self, worker: Worker) -> None:
        timeout = self.settings.timeout
        route = self._registry.route(worker.model)
        lora = route is not None and (bool(route.adapters) or route.runtime_lora)
        adapters_before = worker.adapters
        verdict, metrics, models = await asyncio.gather(
            self._prober.check(worker.url + "/health", timeout),
            self._prober.fetch(worker.url + "/metrics", timeout),
            self._prober.fetch(worker.url + "/v1/models", timeout) if lora else _nothing(),
        )
        if models is not None:
            seen = loaded_adapters(models)
            if seen is not None and worker.adapters is not adapters_before and worker.adapters:
                seen |= worker.adapters  # loaded while the probe was out: its answer predates it
            worker.adapters = seen
        now = self._loop.time()
        if metrics is not None:
            self._read_metrics(worker, metrics.decode(errors="replace"), now)
        if verdict is Verdict.UP:
            worker.slow_probes = 0
            if not worker.up and now >= worker.ejected_until:
                worker.up, worker.failures = True, 0
                log.warning("worker %s (%s) is up", worker.name, worker.model)
            return
        if verdict is Verdict.SLOW:
            worker.slow_probes += 1
            if worker.slow_probes < self.settings.slow_probes:
                return  # not yet: one late answer on a busy host is not an outage
        if worker.up:
            worker.up = False
            log.warning(
                "worker %s (%s) failed its health probe (%s)",
                worker.name,
                worker.model,
                verdict.value,
            )

    def _read_metrics(self, worker: Worker, text: str, now: float) -> None:
        scraped = scrape(text)
        if scraped.saturation is not None:
            worker.saturation, worker.scraped_at = scraped.saturation, now
            worker.waiting = scraped.waiting or 0.0
        route = self._registry.route(worker.model)
        prefix = route.prefix if route is not None else None
        if prefix is None:
            return
        if scraped.cache_tokens is not None:
            prefix.cache_tokens(worker.slot, scraped.cache_tokens)
        if scraped.started is not None:
            if worker.started is not None and scraped.started != worker.started:
                prefix.forget(worker.slot)  # restarted: its prefix cache is empty
                log.warning("worker %s (%s) restarted", worker.name, worker.model)
            worker.started = scraped.started

    def _show(self, worker: Worker) -> None:
        labels = (worker.model, worker.name)
        now = self._loop.time()
        self._metrics.worker_healthy.labels(*labels).set(1 if worker.takes_traffic(now) else 0)
        self._metrics.worker_inflight.labels(*labels).set(worker.inflight)
        self._metrics.worker_draining.labels(*labels).set(1 if worker.draining else 0)
        saturation = worker.known_saturation(now, self.settings.stale_after)
        self._metrics.worker_saturation.labels(*labels).set(saturation or 0.0)
        route = self._registry.route(worker.model)
        if route is not None and route.prefix is not None:
            blocks = route.prefix.index.size(worker.slot)
            self._metrics.prefix_index_blocks.labels(*labels).set(blocks)

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._ejections.aclose()


async def _nothing() -> None:
    return None


def loaded_adapters(models: bytes) -> frozenset[str] | None:
    """The LoRA adapters in a worker's /v1/models: vLLM lists each with `parent` set to the
    base model (None: not a model list)."""
    try:
        doc = json.loads(models)
    except ValueError:
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        return None
    return frozenset(
        entry["id"]
        for entry in data
        if isinstance(entry, dict) and entry.get("parent") and isinstance(entry.get("id"), str)
    )
