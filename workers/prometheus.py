"""Build deploy/prometheus/prometheus.yml from configs/models.yaml: scrape the gateway, every
worker's /metrics (launched and attached) and the DCGM exporter (GPU memory), and load the alert
rules (deploy/prometheus/alerts.yml). Pure: plain dicts.

The same function builds the live monitoring test's configuration, with `Scrape` pointing it at
processes on this machine instead of the compose services.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config.models import ModelConfig, ModelsConfig, WorkerConfig
from workers.compose import DCGM_EXPORTER_PORT, GATEWAY_PORT

# Relative paths are resolved from the config file's directory: deploy/prometheus here, and
# /etc/prometheus in compose, which mounts that directory there.
ALERTS = "alerts.yml"


@dataclass(frozen=True)
class Scrape:
    """Where Prometheus finds what it scrapes and the rules it loads; compose by default."""

    gateway: str = f"gateway:{GATEWAY_PORT}"
    dcgm: str = f"dcgm-exporter:{DCGM_EXPORTER_PORT}"
    rule_files: tuple[str, ...] = (ALERTS,)
    interval: str = "15s"


def _worker_target(model: ModelConfig, worker: WorkerConfig) -> dict[str, Any]:
    # The same `model` and `worker` labels as the gateway's own series, so the dashboard can put
    # a worker's vLLM and gateway views side by side.
    labels = {"model": model.name, "worker": worker.name}
    if worker.url is None:
        # In compose a launched worker is the host named after it.
        return {"targets": [f"{worker.name}:{worker.port}"], "labels": labels}
    # An attached server may sit behind https or a path prefix; Prometheus takes both per target
    # through its reserved labels, so every worker stays in the one `vllm` job.
    parts = urlsplit(worker.url)
    default_port = 443 if parts.scheme == "https" else 80
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    target = f"{host}:{parts.port or default_port}"
    labels["__scheme__"] = parts.scheme
    labels["__metrics_path__"] = f"{parts.path}/metrics"
    return {"targets": [target], "labels": labels}


def prometheus_document(config: ModelsConfig, scrape: Scrape = Scrape()) -> dict[str, Any]:
    workers = [_worker_target(m, w) for m in config.models for w in m.workers]
    return {
        "global": {"scrape_interval": scrape.interval, "evaluation_interval": scrape.interval},
        "rule_files": list(scrape.rule_files),
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": [scrape.gateway]}]},
            {"job_name": "vllm", "static_configs": workers},
            {"job_name": "dcgm", "static_configs": [{"targets": [scrape.dcgm]}]},
        ],
    }
