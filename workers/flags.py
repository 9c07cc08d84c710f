"""Map one model + worker from configs/models.yaml to the vLLM OpenAI server's command-line flags.

The one place that knows vLLM's flag names: the CPU launcher and the compose renderer call it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from gateway.config.models import ModelConfig, ModelsConfig, WorkerConfig

# Where a worker publishes its KV-cache events (vLLM's ZMQ publisher, found by the gateway at its
# /kv_event_sources): precise cache-aware routing follows them. Containers each have their own
# address, so one port serves them all; launched processes on one machine each get their own.
KV_EVENTS_PORT = 5557
# vLLM refuses /v1/load_lora_adapter and /v1/unload_lora_adapter unless this is set.
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
# vLLM silently ignores the Responses API's `store` (so GET /v1/responses/{id} and
# previous_response_id answer 404) unless this is 1; with it, every stored response stays in the
# server's memory until it restarts. Local CPU workers set it; deployments opt in.
RESPONSES_STORE_ENV = "VLLM_ENABLE_RESPONSES_API_STORE"
# vLLM closes a keep-alive connection after 5 idle seconds by default, while the gateway keeps
# idle pooled connections for 30 s (gateway/relay/h1.py): a request sent on a connection
# the server is just closing fails (ClientOSError, a 502). The worker must outlast the pool.
KEEP_ALIVE_ENV = "VLLM_HTTP_TIMEOUT_KEEP_ALIVE"
WORKER_KEEP_ALIVE_SECONDS = 75
# The only --max-lora-rank values vLLM 0.32 accepts (vllm/config/lora.py); others stop it at start.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_flags(
    model: ModelConfig,
    worker: WorkerConfig,
    *,
    model_path: str | None = None,
    host: str | None = None,
    port: int | None = None,
    kv_events_port: int = KV_EVENTS_PORT,
    adapter_paths: Mapping[str, str] | None = None,
) -> list[str]:
    """Flags for `python -m vllm.entrypoints.openai.api_server` serving `worker` of `model`.

    `model_path` replaces the hub id (a local stand-in, a mounted directory); `port` replaces
    `worker.port` (a container's internal port, a test's free port); `host` is omitted unless given,
    which keeps vLLM's default of all interfaces. The KV-cache events are published on
    `kv_events_port`, all interfaces. `adapter_paths` replaces LoRA adapters' configured paths by
    name (local stand-ins). `vllm_args` come last so they can override.
    """
    if not worker.launched:
        raise ValueError(f"worker {worker.name!r} is attached by url; nothing launches it")
    flags = ["--model", model_path or model.model, "--served-model-name", model.name]
    if host is not None:
        flags += ["--host", host]
    listen_port = port if port is not None else worker.port
    if listen_port is not None:
        flags += ["--port", str(listen_port)]
    flags += ["--tensor-parallel-size", str(model.tensor_parallel_size)]
    if model.pipeline_parallel_size > 1:
        flags += ["--pipeline-parallel-size", str(model.pipeline_parallel_size)]
    if model.max_model_len is not None:
        flags += ["--max-model-len", str(model.max_model_len)]
    if model.gpu_memory_utilization is not None:
        flags += ["--gpu-memory-utilization", str(model.gpu_memory_utilization)]
    if model.runner == "pooling":
        flags += ["--runner", "pooling"]
    flags += lora_flags(model, adapter_paths or {})
    flags += ["--kv-events-config", kv_events_config(kv_events_port)]
    if model.scheduling_policy != "fcfs":
        flags += ["--scheduling-policy", model.scheduling_policy]
    return flags + list(model.vllm_args)


def lora_flags(model: ModelConfig, adapter_paths: Mapping[str, str]) -> list[str]:
    """--enable-lora with every adapter preloaded (also for runtime loading alone)."""
    if not model.adapters and not model.runtime_lora:
        return []
    flags = ["--enable-lora"]
    if model.adapters:
        modules = [f"{a.name}={adapter_paths.get(a.name, a.path)}" for a in model.adapters]
        flags += ["--lora-modules", *modules]
    if model.max_lora_rank is not None:
        flags += ["--max-lora-rank", str(model.max_lora_rank)]
    return flags


def vllm_env(model: ModelConfig) -> dict[str, str]:
    """Environment the model's servers need beyond the defaults (launcher, compose, Kubernetes)."""
    env = {KEEP_ALIVE_ENV: str(WORKER_KEEP_ALIVE_SECONDS)}
    if model.runtime_lora:
        env[RUNTIME_LORA_ENV] = "True"
    return env


def kv_events_config(port: int) -> str:
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{port}",
        "topic": "kv-events",
    }
    return json.dumps(config, separators=(",", ":"))


def flag_errors(config: ModelsConfig) -> list[str]:
    """Settings the schema accepts but vLLM would refuse at start."""
    errors = []
    for index, model in enumerate(config.models):
        rank = model.max_lora_rank
        if rank is not None and rank not in VLLM_LORA_RANKS:
            allowed = ", ".join(map(str, VLLM_LORA_RANKS))
            errors.append(
                f"models[{index}] (name={model.name}).max_lora_rank: vLLM accepts only {allowed}"
            )
    return errors
