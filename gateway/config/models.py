"""Schema and loader for configs/models.yaml, the single source of truth for models and workers.

The gateway reads it to route; `workers/` reads the same schema to launch vLLM and render compose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.config.errors import ConfigError

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]


class WorkerConfig(BaseModel):
    """One vLLM OpenAI server: either launched by us on `gpus`, or attached by `url`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    gpus: list[Annotated[int, Field(ge=0)]] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    url: str | None = None
    # Maintenance: the gateway sends it no new requests; those in flight finish (applied on
    # reload: SIGHUP or a change of the file).
    drain: bool = False

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value.rstrip("/") if value is not None else None

    @model_validator(mode="after")
    def _launched_or_attached(self) -> WorkerConfig:
        if self.url is not None:
            if self.gpus is not None or self.port is not None:
                raise ValueError(
                    "a worker with `url` is attached, not launched: drop `gpus`/`port`"
                )
        elif self.gpus is None or self.port is None:
            raise ValueError("a worker needs either `url`, or both `gpus` and `port`")
        return self

    @property
    def launched(self) -> bool:
        return self.url is None


class ModelConfig(BaseModel):
    """One served model name and the workers that serve it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    model: Annotated[str, Field(min_length=1)]
    tensor_parallel_size: Annotated[int, Field(ge=1)] = 1
    pipeline_parallel_size: Annotated[int, Field(ge=1)] = 1
    max_model_len: Annotated[int, Field(ge=16)] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    vllm_args: list[str] = Field(default_factory=list)
    # Gateway side: requests one gateway process keeps in flight on each worker of this model
    # before it queues the rest (default GATEWAY_MAX_INFLIGHT_PER_WORKER).
    max_inflight_per_worker: Annotated[int, Field(ge=1)] | None = None
    # `priority`: vLLM runs with --scheduling-policy priority and the gateway sends each
    # request's class as its `priority` (lower first); `fcfs`: vLLM's default, first come first.
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    workers: Annotated[list[WorkerConfig], Field(min_length=1)]


class ModelsConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: Annotated[list[ModelConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_names(self) -> ModelsConfig:
        seen: set[str] = set()
        for model in self.models:
            if model.name in seen:
                raise ValueError(f"model name {model.name!r} appears twice")
            seen.add(model.name)
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)


def _describe(error: ValidationError, doc: object) -> str:
    lines = []
    for item in error.errors():
        lines.append(f"  {_field_path(item['loc'], doc)}: {item['msg']}")
    return "\n".join(lines)


def _field_path(loc: tuple[int | str, ...], doc: object) -> str:
    """Turn pydantic's location into `models[0] (name=x).workers[1].port`, naming what it can."""
    parts: list[str] = []
    node = doc
    for step in loc:
        if isinstance(step, int):
            label = f"[{step}]"
            if isinstance(node, list) and step < len(node):
                node = node[step]
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    label += f" (name={node['name']})"
            parts.append(label)
        else:
            parts.append(f".{step}" if parts else step)
            node = node.get(step) if isinstance(node, dict) else None
    return "".join(parts) or "(file)"


def parse_models_config(text: str, source: str = "models.yaml") -> ModelsConfig:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping with a `models:` list at the top")
    try:
        return ModelsConfig.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n{_describe(exc, doc)}") from exc


def load_models_config(path: Path) -> ModelsConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_models_config(text, str(path))
