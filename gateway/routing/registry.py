"""Model name -> the workers that serve it, built once from configs/models.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.models_config import ModelsConfig, WorkerConfig


@dataclass(eq=False, slots=True)
class Worker:
    """One vLLM OpenAI server as the gateway sees it. `inflight` is the gateway's own count."""

    name: str
    model: str
    url: str
    inflight: int = 0


@dataclass(slots=True)
class ModelRoute:
    name: str
    workers: tuple[Worker, ...]
    # Rotates ties between equally loaded workers so load spreads even at low concurrency.
    turn: int = field(default=0)


def worker_url(worker: WorkerConfig, template: str) -> str:
    if worker.url is not None:
        return worker.url
    return template.format(name=worker.name, port=worker.port).rstrip("/")


class Registry:
    def __init__(self, config: ModelsConfig, url_template: str) -> None:
        self._routes: dict[str, ModelRoute] = {
            model.name: ModelRoute(
                name=model.name,
                workers=tuple(
                    Worker(name=w.name, model=model.name, url=worker_url(w, url_template))
                    for w in model.workers
                ),
            )
            for model in config.models
        }

    def route(self, model: str) -> ModelRoute | None:
        return self._routes.get(model)

    def routes(self) -> list[ModelRoute]:
        return list(self._routes.values())
