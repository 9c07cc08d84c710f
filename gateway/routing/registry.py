"""Model name -> the workers that serve it, from configs/models.yaml, and kept in step with it
when it is reloaded.

A Worker also carries what the gateway knows of its health and load; routing/health.py keeps
that up to date and routing/policy.py reads it. A reload keeps the Worker (and that knowledge)
of every worker whose name and URL did not change; requests in flight on a worker that left
finish on it, and none is sent there any more.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config.models import ModelConfig, ModelsConfig, WorkerConfig
from gateway.routing.cache_aware import PrefixRouting, PrefixSettings, Share


@dataclass(eq=False, slots=True)
class Worker:
    """One vLLM OpenAI server as the gateway sees it."""

    name: str
    model: str
    url: str
    inflight: int = 0  # the gateway's own count: never stale
    slot: int = 0  # position among its model's workers (its bit in the prefix index)
    # Active health: the last probe of /health answered 200. With probing off it stays True.
    up: bool = True
    slow_probes: int = 0  # /health probes in a row that got no answer in time
    # Passive health: consecutive failed exchanges, and until when (loop clock) it is ejected.
    failures: int = 0
    ejected_until: float = 0.0
    # From the worker's /metrics: saturation max(waiting/5, kv/0.8) and when it was scraped.
    saturation: float = 0.0
    waiting: float = 0.0  # requests queued inside vLLM, from the same scrape
    scraped_at: float | None = None
    started: float | None = None  # its process start time, as its /metrics says
    draining: bool = False  # maintenance: no new requests, those in flight finish
    # The LoRA adapters it has loaded, from its /v1/models (None: not known yet).
    adapters: frozenset[str] | None = None

    def takes_traffic(self, now: float) -> bool:
        return self.up and not self.draining and now >= self.ejected_until

    def known_saturation(self, now: float, stale_after: float) -> float | None:
        """The scraped saturation, or None when there is none or it is too old to trust."""
        if self.scraped_at is None or now - self.scraped_at > stale_after:
            return None
        return self.saturation


@dataclass(slots=True)
class ModelRoute:
    name: str
    workers: tuple[Worker, ...]
    max_inflight_per_worker: int
    # Rotates ties between equally loaded workers so load spreads even at low concurrency.
    turn: int = field(default=0)
    # Cache-aware routing (models with more than one worker, when it is on).
    prefix: PrefixRouting | None = None
    runner: str = "generate"  # what its workers run: generate or pooling
    adapters: dict[str, str] = field(default_factory=dict)  # LoRA adapter name -> its path
    runtime_lora: bool = False  # an adapter may be loaded on a worker at run time

    def worker(self, name: str) -> Worker | None:
        return next((w for w in self.workers if w.name == name), None)


def worker_url(worker: WorkerConfig, template: str) -> str:
    if worker.url is not None:
        return worker.url
    return template.format(name=worker.name, port=worker.port).rstrip("/")


@dataclass(slots=True)
class Change:
    """What a reload changed: models and workers that came and went, workers set to drain."""

    added_models: list[str] = field(default_factory=list)
    removed_models: list[str] = field(default_factory=list)
    added: list[Worker] = field(default_factory=list)
    removed: list[Worker] = field(default_factory=list)
    draining: list[Worker] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.added_models, self.removed_models, self.added, self.removed))


class Registry:
    def __init__(
        self,
        config: ModelsConfig,
        url_template: str,
        max_inflight: int,
        prefix: PrefixSettings | None = None,
    ) -> None:
        self._template = url_template
        self._max_inflight = max_inflight
        self._prefix = prefix
        self._share: Share | None = None
        self._routes: dict[str, ModelRoute] = {}
        self._adapters: dict[str, ModelRoute] = {}  # adapter name -> its base model's route
        self.apply(config)

    def route(self, model: str) -> ModelRoute | None:
        return self._routes.get(model)

    def resolve(self, name: str) -> tuple[ModelRoute, str | None] | None:
        """The route serving `name` and, when `name` is a LoRA adapter, the adapter."""
        route = self._routes.get(name)
        if route is not None:
            return route, None
        route = self._adapters.get(name)
        return (route, name) if route is not None else None

    def routes(self) -> list[ModelRoute]:
        return list(self._routes.values())

    def workers(self) -> list[Worker]:
        return [worker for route in self._routes.values() for worker in route.workers]

    def share_with(self, share: Share) -> None:
        """Cache-aware routing decisions go to the other replicas through `share`."""
        self._share = share
        for route in self._routes.values():
            if route.prefix is not None:
                route.prefix.share = share

    def apply(self, config: ModelsConfig) -> Change:
        """Make the routes match `config`, in place (queues and requests hold these objects)."""
        change = Change()
        routes: dict[str, ModelRoute] = {}
        for model in config.models:
            old = self._routes.get(model.name)
            routes[model.name] = self._update(old, model, change)
            if old is None:
                change.added_models.append(model.name)
        for name, route in self._routes.items():
            if name not in routes:
                change.removed_models.append(name)
                change.removed.extend(route.workers)
        self._routes = routes
        self._adapters = {a: r for r in routes.values() for a in r.adapters}
        return change

    def _update(self, route: ModelRoute | None, model: ModelConfig, change: Change) -> ModelRoute:
        kept = {w.name: w for w in route.workers} if route is not None else {}
        workers: list[Worker] = []
        leaving: list[Worker] = []
        for config in model.workers:
            url = worker_url(config, self._template)
            worker = kept.pop(config.name, None)
            if worker is not None and worker.url != url:
                leaving.append(worker)  # the same name at a new address: a new worker
                worker = None
            if worker is None:
                worker = Worker(name=config.name, model=model.name, url=url, slot=-1)
                change.added.append(worker)
            if config.drain and not worker.draining:
                change.draining.append(worker)
            worker.draining = config.drain
            workers.append(worker)
        leaving.extend(kept.values())  # no longer listed
        change.removed.extend(leaving)
        _give_slots(workers)
        cap = model.max_inflight_per_worker or self._max_inflight
        if route is None:
            route = ModelRoute(model.name, tuple(workers), cap)
        route.workers, route.max_inflight_per_worker = tuple(workers), cap
        route.runner, route.runtime_lora = model.runner, model.runtime_lora
        route.adapters = {adapter.name: adapter.path for adapter in model.adapters}
        self._cache_aware(route, [w.slot for w in leaving])
        return route

    def _cache_aware(self, route: ModelRoute, freed: list[int]) -> None:
        if route.prefix is not None:
            for slot in freed:
                route.prefix.forget(slot)
            route.prefix.grow(max((w.slot for w in route.workers), default=0) + 1)
        elif self._prefix is not None and len(route.workers) > 1:
            slots = max(w.slot for w in route.workers) + 1
            route.prefix = PrefixRouting.for_workers(slots, self._prefix)
            route.prefix.share = self._share


def _give_slots(workers: list[Worker]) -> None:
    """New workers take the lowest slots (bits in the prefix index) the others leave free."""
    taken = {w.slot for w in workers if w.slot >= 0}
    free = (slot for slot in range(len(workers) + len(taken)) if slot not in taken)
    for worker in workers:
        if worker.slot < 0:
            worker.slot = next(free)
