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
    """One vLLM OpenAI server: launched by us on `gpus`, attached by `url`, or every address a
    DNS name resolves to (`dns: "host:port"`, e.g. a Kubernetes headless Service: one worker
    per address, followed as it changes; gateway/routing/discovery.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    gpus: list[Annotated[int, Field(ge=0)]] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    url: str | None = None
    dns: str | None = None
    # Maintenance: the gateway sends it no new requests; those in flight finish (applied on
    # reload: SIGHUP or a change of the file).
    drain: bool = False

    @field_validator("url")
    @classmethod
    def _url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        return value.rstrip("/") if value is not None else None

    @field_validator("dns")
    @classmethod
    def _dns_is_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            split_host_port(value)  # ValueError says what is wrong
        return value

    @model_validator(mode="after")
    def _launched_or_attached(self) -> WorkerConfig:
        if self.dns is not None:
            if self.url is not None:
                raise ValueError("a worker has either `url` or `dns`, not both")
            if self.gpus is not None or self.port is not None:
                raise ValueError(
                    "a worker with `dns` is attached, not launched: drop `gpus`/`port` "
                    "(the port goes in `dns: host:port`)"
                )
        elif self.url is not None:
            if self.gpus is not None or self.port is not None:
                raise ValueError(
                    "a worker with `url` is attached, not launched: drop `gpus`/`port`"
                )
        elif self.gpus is None or self.port is None:
            raise ValueError("a worker needs `url`, `dns`, or both `gpus` and `port`")
        return self

    @property
    def launched(self) -> bool:
        return self.url is None and self.dns is None


def split_host_port(target: str) -> tuple[str, int]:
    """`host:port` (an IPv6 address in brackets: `[::1]:8000`) -> (host, port)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host:
        raise ValueError(f"dns must be host:port, got {target!r} (the port is required)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"dns must be host:port with a port in 1-65535, got {target!r}")
    if not host or any(c in host for c in "/ []@"):
        raise ValueError(f"dns must be host:port, got {target!r}")
    return host, int(port)


class AdapterConfig(BaseModel):
    """A LoRA adapter served as a model of its own: its `name` is what clients ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    # A local directory (mounted into the worker) or a Hugging Face repository id.
    path: Annotated[str, Field(min_length=1)]


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
    # What the workers run the model as: `generate` (chat, completions, responses, messages) or
    # `pooling` (embeddings, score/rerank, classify, pooling). Tokenize/detokenize work on both.
    runner: Literal["generate", "pooling"] = "generate"
    # LoRA adapters: launched workers start with --enable-lora and load them all; each is listed
    # in /v1/models with `parent` set to this model.
    adapters: list[AdapterConfig] = Field(default_factory=list)
    # Let the gateway load an adapter at run time (vLLM's /v1/load_lora_adapter) on a worker that
    # lacks it; vLLM needs VLLM_ALLOW_RUNTIME_LORA_UPDATING=True for that (set on launched workers).
    runtime_lora: bool = False
    max_lora_rank: Annotated[int, Field(ge=1)] | None = None
    # `priority`: vLLM runs with --scheduling-policy priority and the gateway sends each
    # request's class as its `priority` (lower first); `fcfs`: vLLM's default, first come first.
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    workers: Annotated[list[WorkerConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _adapters_need_generate(self) -> ModelConfig:
        if self.adapters and self.runner != "generate":
            raise ValueError("adapters are served by `runner: generate` models only")
        return self


class ModelsConfig(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: Annotated[list[ModelConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_names(self) -> ModelsConfig:
        seen: set[str] = set()
        for model in self.models:
            for name in (model.name, *(adapter.name for adapter in model.adapters)):
                if name in seen:
                    raise ValueError(f"model or adapter name {name!r} appears twice")
                seen.add(name)
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)

    def base_of(self, name: str) -> ModelConfig | None:
        """The model that serves `name`: itself, or the base model of the adapter so named."""
        for model in self.models:
            if model.name == name or any(a.name == name for a in model.adapters):
                return model
        return None


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
