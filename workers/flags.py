"""Map one model + worker from configs/models.yaml to the vLLM OpenAI server's command-line flags.

The one place that knows vLLM's flag names: the CPU launcher and the compose renderer call it.
"""

from __future__ import annotations

from gateway.config.models import ModelConfig, WorkerConfig


def vllm_flags(
    model: ModelConfig,
    worker: WorkerConfig,
    *,
    model_path: str | None = None,
    host: str | None = None,
    port: int | None = None,
) -> list[str]:
    """Flags for `python -m vllm.entrypoints.openai.api_server` serving `worker` of `model`.

    `model_path` replaces the hub id (a local stand-in, a mounted directory); `port` replaces
    `worker.port` (a container's internal port, a test's free port); `host` is omitted unless given,
    which keeps vLLM's default of all interfaces. `vllm_args` come last so they can override.
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
    return flags + list(model.vllm_args)
