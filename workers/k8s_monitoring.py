"""Kubernetes objects that need operators: Prometheus Operator's ServiceMonitor, PodMonitor and
PrometheusRule (the alerts of workers/alerts.py), the Grafana dashboard's ConfigMap, and KEDA's
ScaledObject per model. Pure: each function returns one object as plain dicts.
"""

from __future__ import annotations

from typing import Any

from gateway.config.models import ModelConfig
from workers.alerts import alerts_document
from workers.k8s import (
    GATEWAY,
    MODEL_ANNOTATION,
    PART_OF,
    VLLM_PORT,
    VLLM_SELECTOR,
    labels,
    launched_count,
    metadata,
    vllm_name,
)
from workers.k8s_gateway import PROMETHEUS_NAMESPACE

SCRAPE_INTERVAL = "15s"
# prometheus-operator's Service in front of the Prometheus it runs (KEDA's query goes there).
PROMETHEUS_URL = f"http://prometheus-operated.{PROMETHEUS_NAMESPACE}.svc:9090"
# KEDA: requests (queued in the gateway + in flight on the model's workers) one vLLM replica is
# meant to carry, and how far beyond the rendered replicas it may scale.
KEDA_REQUESTS_PER_REPLICA = 64
KEDA_MAX_FACTOR = 2
# vLLM pods take minutes to start: give load time to settle before one is removed.
KEDA_SCALE_DOWN_WINDOW_SECONDS = 900


def _job(name: str) -> dict[str, str]:
    # The alerts select `up{job="gateway"}` and `up{job="vllm"}`, as in compose's Prometheus.
    return {"targetLabel": "job", "replacement": name}


def service_monitor() -> dict[str, Any]:
    """Prometheus scrapes every gateway pod's /metrics."""
    endpoint = {
        "port": "http",
        "path": "/metrics",
        "interval": SCRAPE_INTERVAL,
        "relabelings": [_job(GATEWAY)],
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(GATEWAY, labels(GATEWAY)),
        "spec": {"selector": {"matchLabels": labels(GATEWAY)}, "endpoints": [endpoint]},
    }


def pod_monitor() -> dict[str, Any]:
    """Prometheus scrapes every vLLM pod's /metrics, labelled `model` and `worker` as the gateway
    labels its own series (`worker`: `vllm-<model>@<pod ip>:<port>`, the name discovery gives
    each address), so the dashboard can put the two side by side."""
    annotation = "__meta_kubernetes_pod_annotation_" + "".join(
        c if c.isalnum() else "_" for c in MODEL_ANNOTATION
    )
    endpoint = {
        "port": "http",
        "path": "/metrics",
        "interval": SCRAPE_INTERVAL,
        "relabelings": [
            _job("vllm"),
            {"sourceLabels": [annotation], "targetLabel": "model"},
            # The gateway's name for the pod, found through the Service's DNS: <service>@<ip>:<port>
            {
                "sourceLabels": [
                    "__meta_kubernetes_pod_label_app_kubernetes_io_instance",
                    "__meta_kubernetes_pod_ip",
                ],
                "separator": "@",
                "regex": "(.+)",
                "replacement": f"$1:{VLLM_PORT}",
                "targetLabel": "worker",
            },
        ],
    }
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": metadata("vllm", {**VLLM_SELECTOR, **PART_OF}),
        "spec": {
            "selector": {"matchLabels": dict(VLLM_SELECTOR)},
            "podMetricsEndpoints": [endpoint],
        },
    }


def prometheus_rule() -> dict[str, Any]:
    """The alert rules of deploy/prometheus/alerts.yml, from the same source."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": metadata("llm-gateway", dict(PART_OF)),
        "spec": alerts_document(),
    }


def dashboard_configmap(dashboard_json: str) -> dict[str, Any]:
    """Grafana's dashboard sidecar loads ConfigMaps labelled grafana_dashboard: "1"."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata("gateway-dashboard", {"grafana_dashboard": "1", **PART_OF}),
        "data": {"gateway.json": dashboard_json},
    }


def keda_max_replicas(model: ModelConfig) -> int:
    return KEDA_MAX_FACTOR * launched_count(model)


def demand_query(model: ModelConfig) -> str:
    """Requests for the model waiting in the gateways' queues plus those in flight on its workers.

    The queue alone is zero whenever the replicas keep up, so scaling on it would drop to the
    minimum as soon as the queue drains and grow again when it refills; queue + in flight is the
    load the replicas carry, and divided by the per-replica target gives the replicas it needs.
    """
    selector = f'{{model="{model.name}"}}'
    return f"sum(gateway_queue_depth{selector}) + sum(gateway_worker_inflight{selector})"


def scaled_object(model: ModelConfig) -> dict[str, Any]:
    name = vllm_name(model)
    trigger = {
        "type": "prometheus",
        "metadata": {
            "serverAddress": PROMETHEUS_URL,
            "query": demand_query(model),
            "threshold": str(KEDA_REQUESTS_PER_REPLICA),
            # No series yet (no request since the gateways started): no demand.
            "ignoreNullValues": "true",
        },
    }
    scale_down = {"stabilizationWindowSeconds": KEDA_SCALE_DOWN_WINDOW_SECONDS}
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(name, {**VLLM_SELECTOR, **PART_OF}),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name},
            "minReplicaCount": launched_count(model),
            "maxReplicaCount": keda_max_replicas(model),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": scale_down}}},
            "triggers": [trigger],
        },
    }
