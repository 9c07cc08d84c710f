"""Build deploy/prometheus/prometheus.yml from configs/models.yaml: scrape the gateway, every
worker's /metrics (launched and attached; a `dns` worker's every address, through
dns_sd_configs) and the DCGM exporter (GPU memory), and load the alert
rules (deploy/prometheus/alerts.yml). Pure: plain dicts.

The same function builds the live monitoring test's configuration, with `Scrape` pointing it at
processes on this machine instead of the compose services.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.config.models import ModelConfig, ModelsConfig, WorkerConfig, split_host_port
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


def _dns_job(model: ModelConfig, worker: WorkerConfig) -> dict[str, Any]:
    """A `dns` worker: every address its name resolves to, as the gateway sees them. Labels as
    the gateway's own series: `worker` is `<name>@<ip>:<port>`, the job is `vllm`."""
    host, port = split_host_port(worker.dns or "")
    return {
        "job_name": f"vllm-dns-{model.name}-{worker.name}",
        "dns_sd_configs": [{"names": [host], "type": "A", "port": port}],
        "relabel_configs": [
            {"target_label": "job", "replacement": "vllm"},
            {"target_label": "model", "replacement": model.name},
            {
                "source_labels": ["__address__"],
                "target_label": "worker",
                "replacement": f"{worker.name}@$1",
            },
        ],
    }


def prometheus_document(config: ModelsConfig, scrape: Scrape = Scrape()) -> dict[str, Any]:
    pairs = [(m, w) for m in config.models for w in m.workers]
    workers = [_worker_target(m, w) for m, w in pairs if w.dns is None]
    found = [_dns_job(m, w) for m, w in pairs if w.dns is not None]
    return {
        "global": {"scrape_interval": scrape.interval, "evaluation_interval": scrape.interval},
        "rule_files": list(scrape.rule_files),
        "scrape_configs": [
            {"job_name": "gateway", "static_configs": [{"targets": [scrape.gateway]}]},
            {"job_name": "vllm", "static_configs": workers},
            *found,
            {"job_name": "dcgm", "static_configs": [{"targets": [scrape.dcgm]}]},
        ],
    }
