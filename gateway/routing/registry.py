"""Model name -> the workers that serve it, built once from configs/models.yaml.

A Worker also carries what the gateway knows of its health and load; routing/health.py keeps
that up to date and routing/policy.py reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config.models import ModelsConfig, WorkerConfig
from gateway.routing.cache_aware import PrefixRouting, PrefixSettings


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
    # Passive health: consecutive failed exchanges, and until when (loop clock) it is ejected.
    failures: int = 0
    ejected_until: float = 0.0
    # From the worker's /metrics: saturation max(waiting/5, kv/0.8) and when it was scraped.
    saturation: float = 0.0
    scraped_at: float | None = None
    started: float | None = None  # its process start time, as its /metrics says

    def takes_traffic(self, now: float) -> bool:
        return self.up and now >= self.ejected_until

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

    def worker(self, name: str) -> Worker | None:
        return next((w for w in self.workers if w.name == name), None)


def worker_url(worker: WorkerConfig, template: str) -> str:
    if worker.url is not None:
        return worker.url
    return template.format(name=worker.name, port=worker.port).rstrip("/")


class Registry:
    def __init__(
        self,
        config: ModelsConfig,
        url_template: str,
        max_inflight: int,
        prefix: PrefixSettings | None = None,
    ) -> None:
        self._routes: dict[str, ModelRoute] = {}
        for model in config.models:
            workers = tuple(
                Worker(name=w.name, model=model.name, url=worker_url(w, url_template), slot=slot)
                for slot, w in enumerate(model.workers)
            )
            cache_aware = None
            if prefix is not None and len(workers) > 1:
                cache_aware = PrefixRouting.for_workers(len(workers), prefix)
            self._routes[model.name] = ModelRoute(
                name=model.name,
                workers=workers,
                max_inflight_per_worker=model.max_inflight_per_worker or max_inflight,
                prefix=cache_aware,
            )

    def route(self, model: str) -> ModelRoute | None:
        return self._routes.get(model)

    def routes(self) -> list[ModelRoute]:
        return list(self._routes.values())

    def workers(self) -> list[Worker]:
        return [worker for route in self._routes.values() for worker in route.workers]
