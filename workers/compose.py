"""Build compose.gpu.yml from configs/models.yaml: one vLLM OpenAI server per launched worker,
pinned to its GPUs, plus the gateway, Redis, Prometheus, the DCGM exporter and Grafana.

Pure: returns the document as plain dicts (rendering to text is workers/render.py).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.config.models import ModelConfig, ModelsConfig, WorkerConfig
from workers.flags import RESPONSES_STORE_ENV, vllm_env, vllm_flags
from workers.lifecycle import (
    GATEWAY_DRAIN_SECONDS,
    GATEWAY_STOP_GRACE_SECONDS,
    WORKER_START_SECONDS,
    WORKER_STOP_GRACE_SECONDS,
)
from workers.versions import ImageVersions

GATEWAY_PORT = 8000
DCGM_EXPORTER_PORT = 9400
# The services every deployment has; a worker may not take one of these names.
FIXED_SERVICES = ("gateway", "redis", "prometheus", "dcgm-exporter", "grafana")
# Where ./configs (models file and keys file) appears inside the gateway container. A directory
# mount, not a file mount, so an edited keys file (a new inode) is still seen and reloaded.
CONFIG_DIR_IN_CONTAINER = "/etc/gateway"
WORKER_START_PERIOD = f"{WORKER_START_SECONDS}s"
WORKER_STOP_GRACE = f"{WORKER_STOP_GRACE_SECONDS}s"
GATEWAY_STOP_GRACE = f"{GATEWAY_STOP_GRACE_SECONDS}s"
# The gateway image, built from deploy/Dockerfile (compose builds it; a cluster pulls it).
GATEWAY_IMAGE = "llm-gateway:local"
# Limits and leases are short-lived by design: nothing worth persisting.
REDIS_COMMAND = ("redis-server", "--save", "", "--appendonly", "no")
HF_CACHE = "/root/.cache/huggingface"
# LoRA adapters named by a local path: ./adapters on the host, read-only in workers that use them.
ADAPTERS_DIR = "/adapters"
VLLM_CACHE = "/root/.cache/vllm"
_HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def compose_errors(config: ModelsConfig) -> list[str]:
    """Problems that only matter in compose: a launched worker's name becomes its service and host
    name (the gateway calls http://{name}:{port}), so it must be a DNS label and not clash."""
    errors = []
    for m_index, model in enumerate(config.models):
        for w_index, worker in enumerate(model.workers):
            if not worker.launched:
                continue
            field = f"models[{m_index}] (name={model.name}).workers[{w_index}] (name={worker.name})"
            if worker.name in FIXED_SERVICES:
                errors.append(f"{field}.name: {worker.name!r} is taken by the compose service")
            elif not _HOST_NAME.match(worker.name):
                errors.append(
                    f"{field}.name: in compose a worker's name is its host name; use lowercase "
                    "letters, digits and '-' only"
                )
    return errors


def escape_dollars(value: str) -> str:
    """A literal `$` survives as `$$`: compose interpolates `$VAR` everywhere, and Kubernetes
    expands `$(VAR)` in a container's command and args, both turning `$$` back into `$`."""
    return value.replace("$", "$$")


def _healthcheck(url: str, start_period: str) -> dict[str, Any]:
    # The vLLM image has Python but is not documented to have curl; urlopen raises on non-2xx.
    probe = f"import urllib.request; urllib.request.urlopen('{url}', timeout=4)"
    return {
        "test": ["CMD", "python3", "-c", probe],
        "interval": "15s",
        "timeout": "5s",
        "retries": 3,
        "start_period": start_period,
    }


def _gpu_reservation(**which: Any) -> dict[str, Any]:
    device = {"driver": "nvidia", **which, "capabilities": ["gpu"]}
    return {"resources": {"reservations": {"devices": [device]}}}


def worker_cache_volume(worker: WorkerConfig) -> str:
    # One per worker: replicas of a model would otherwise write the same torch.compile cache files.
    return f"vllm-cache-{worker.name}"


def worker_service(model: ModelConfig, worker: WorkerConfig, image: str) -> dict[str, Any]:
    port, gpus = worker.port, worker.gpus
    if port is None or gpus is None:
        raise ValueError(f"worker {worker.name!r} is attached by url; compose does not run it")
    volumes = [f"hf-cache:{HF_CACHE}", f"{worker_cache_volume(worker)}:{VLLM_CACHE}"]
    if model.adapters or model.runtime_lora:
        volumes.append(f"./adapters:{ADAPTERS_DIR}:ro")
    environment = {"HF_TOKEN": "${HF_TOKEN:-}", **vllm_env(model)}
    if model.runner == "generate":
        # Opt-in from the shell or .env (README "Responses API"): vLLM never frees stored ones.
        environment[RESPONSES_STORE_ENV] = f"${{{RESPONSES_STORE_ENV}:-0}}"
    return {
        "image": image,
        "command": [escape_dollars(flag) for flag in vllm_flags(model, worker)],
        "environment": environment,
        "volumes": volumes,
        # PyTorch shares tensors between the ranks of tensor/pipeline parallelism through shared
        # memory; Docker's default 64 MB /dev/shm is far too small. vLLM's docs use ipc: host.
        "ipc": "host",
        # device_ids expose exactly these host GPUs, renumbered from 0 inside the container, so
        # no CUDA_VISIBLE_DEVICES is set on top (the host ids would not exist in there).
        "deploy": _gpu_reservation(device_ids=[str(gpu) for gpu in gpus]),
        # Reached by the gateway and Prometheus on the compose network only; never published.
        "expose": [str(port)],
        "healthcheck": _healthcheck(f"http://127.0.0.1:{port}/health", WORKER_START_PERIOD),
        "restart": "unless-stopped",
        "stop_grace_period": WORKER_STOP_GRACE,
    }


def gateway_service(versions: ImageVersions, config_in_container: str) -> dict[str, Any]:
    return {
        "build": {
            "context": ".",
            "dockerfile": "deploy/Dockerfile",
            "args": {"PYTHON_IMAGE": versions.python},
        },
        "image": GATEWAY_IMAGE,
        "environment": {
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_PORT": str(GATEWAY_PORT),
            "GATEWAY_DRAIN_TIMEOUT": str(GATEWAY_DRAIN_SECONDS),
            "GATEWAY_CONFIG": config_in_container,
            "GATEWAY_KEYS_FILE": f"{CONFIG_DIR_IN_CONTAINER}/keys.yaml",
            "GATEWAY_REDIS_URL": "redis://redis:6379/0",
            # Each worker is its own host on the compose network, listening on its own port.
            "GATEWAY_WORKER_URL_TEMPLATE": "http://{name}:{port}",
            # About one process per core of the host; override in the environment or .env.
            "GATEWAY_PROCESSES": "${GATEWAY_PROCESSES:-4}",
        },
        "volumes": [f"./configs:{CONFIG_DIR_IN_CONTAINER}:ro"],
        "ports": [f"${{GATEWAY_PUBLISH:-{GATEWAY_PORT}}}:{GATEWAY_PORT}"],
        "depends_on": {"redis": {"condition": "service_healthy"}},
        "restart": "unless-stopped",
        "stop_grace_period": GATEWAY_STOP_GRACE,
    }


def support_services(versions: ImageVersions) -> dict[str, dict[str, Any]]:
    """Redis, Prometheus, the DCGM exporter and Grafana: the same in every deployment."""
    return {
        "redis": {
            "image": versions.redis,
            "command": list(REDIS_COMMAND),
            "healthcheck": {
                "test": ["CMD", "redis-cli", "ping"],
                "interval": "5s",
                "timeout": "3s",
                "retries": 5,
            },
            "restart": "unless-stopped",
        },
        "prometheus": {
            "image": versions.prometheus,
            # The directory, so the rendered prometheus.yml and alerts.yml are re-read on reload.
            "volumes": ["./deploy/prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
            "ports": ["127.0.0.1:9090:9090"],
            "restart": "unless-stopped",
        },
        "dcgm-exporter": {
            "image": versions.dcgm_exporter,
            # DCGM's profiling counters need SYS_ADMIN; without it the exporter starts degraded.
            "cap_add": ["SYS_ADMIN"],
            "deploy": _gpu_reservation(count="all"),
            "expose": [str(DCGM_EXPORTER_PORT)],
            "restart": "unless-stopped",
        },
        "grafana": {
            "image": versions.grafana,
            "environment": {
                "GF_SECURITY_ADMIN_PASSWORD": "${GRAFANA_ADMIN_PASSWORD:-admin}",
                "GF_USERS_ALLOW_SIGN_UP": "false",
            },
            "volumes": [
                "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro",
                "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro",
                "grafana-data:/var/lib/grafana",
            ],
            "ports": ["127.0.0.1:3000:3000"],
            "depends_on": ["prometheus"],
            "restart": "unless-stopped",
        },
    }


def compose_document(
    config: ModelsConfig, versions: ImageVersions, config_in_container: str
) -> dict[str, Any]:
    """The whole compose file. `config_in_container` is the models file's path in the gateway."""
    workers = {
        worker.name: worker_service(model, worker, versions.vllm)
        for model in config.models
        for worker in model.workers
        if worker.launched
    }
    services = {"gateway": gateway_service(versions, config_in_container)}
    services |= workers
    services |= support_services(versions)
    volumes = ["hf-cache"] + [
        worker_cache_volume(w) for m in config.models for w in m.workers if w.launched
    ]
    volumes += ["prometheus-data", "grafana-data"]
    return {"services": services, "volumes": {name: {} for name in volumes}}
