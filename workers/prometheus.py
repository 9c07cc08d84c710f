"""Build deploy/prometheus/prometheus.yml from configs/models.yaml: scrape the gateway, every
worker's /metrics (launched and attached) and the DCGM exporter (GPU memory). Pure: plain dicts.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from gateway.models_config import ModelConfig, ModelsConfig, WorkerConfig
from workers.compose import DCGM_EXPORTER_PORT, GATEWAY_PORT

SCRAPE_INTERVAL = "15s"
# Alert and recording rules live beside the rendered file (deploy/prometheus/rules/).
RULE_FILES = "/etc/prometheus/rules/*.yml"


def _worker_target(model: ModelConfig, worker: WorkerConfig) -> dict[str, Any]:
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


def prometheus_document(config: ModelsConfig) -> dict[str, Any]:
    workers = [_worker_target(m, w) for m in config.models for w in m.workers]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [RULE_FILES],
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": [f"gateway:{GATEWAY_PORT}"]}]},
            {"job_name": "vllm", "static_configs": workers},
            {
                "job_name": "dcgm",
                "static_configs": [{"targets": [f"dcgm-exporter:{DCGM_EXPORTER_PORT}"]}],
            },
        ],
    }
