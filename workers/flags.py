"""Map one model + worker from configs/models.yaml to the vLLM OpenAI server's command-line flags.

The one place that knows vLLM's flag names: the CPU launcher and the compose renderer call it.
"""

from __future__ import annotations

import json

from gateway.config.models import ModelConfig, WorkerConfig

# Where a worker publishes its KV-cache events (vLLM's ZMQ publisher, found by the gateway at its
# /kv_event_sources): precise cache-aware routing follows them. Containers each have their own
# address, so one port serves them all; launched processes on one machine each get their own.
KV_EVENTS_PORT = 5557


def vllm_flags(
    model: ModelConfig,
    worker: WorkerConfig,
    *,
    model_path: str | None = None,
    host: str | None = None,
    port: int | None = None,
    kv_events_port: int = KV_EVENTS_PORT,
) -> list[str]:
    """Flags for `python -m vllm.entrypoints.openai.api_server` serving `worker` of `model`.

    `model_path` replaces the hub id (a local stand-in, a mounted directory); `port` replaces
    `worker.port` (a container's internal port, a test's free port); `host` is omitted unless given,
    which keeps vLLM's default of all interfaces. The KV-cache events are published on
    `kv_events_port`, all interfaces. `vllm_args` come last so they can override.
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
    flags += ["--kv-events-config", kv_events_config(kv_events_port)]
    if model.scheduling_policy != "fcfs":
        flags += ["--scheduling-policy", model.scheduling_policy]
    return flags + list(model.vllm_args)


def kv_events_config(port: int) -> str:
    config = {
        "enable_kv_cache_events": True,
        "publisher": "zmq",
        "endpoint": f"tcp://*:{port}",
        "topic": "kv-events",
    }
    return json.dumps(config, separators=(",", ":"))
