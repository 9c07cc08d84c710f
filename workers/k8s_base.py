"""Assemble deploy/k8s/: every object of the kustomize base in its own file, the kustomization that
lists them, and the optional KEDA component (deploy/k8s/keda/) the base does not include.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config.models import ModelsConfig
from workers.k8s import (
    NAMESPACE,
    PART_OF,
    VLLM_SELECTOR,
    launched_count,
    redis_service,
    redis_statefulset,
    vllm_name,
    vllm_service,
    vllm_statefulset,
)
from workers.k8s_gateway import (
    KEYS_SECRET,
    gateway_deployment,
    gateway_hpa,
    gateway_models,
    gateway_pdb,
    gateway_service,
    models_configmap,
    redis_network_policy,
    vllm_network_policy,
)
from workers.k8s_monitoring import (
    dashboard_configmap,
    pod_monitor,
    prometheus_rule,
    scaled_object,
    service_monitor,
)
from workers.versions import ImageVersions

KEDA_DIR = "keda"
_REDIS_NOTE = (
    "One Redis, nothing persisted: limits, leases and shared worker health are short-lived, and\n"
    "while it restarts the gateway follows GATEWAY_REDIS_FAIL_OPEN. For high availability use a\n"
    "managed Redis or Redis Sentinel: point GATEWAY_REDIS_URL at it, and leave Redis out (an\n"
    "overlay patch with `$patch: delete` for this StatefulSet and its Service)."
)


@dataclass(frozen=True)
class Manifest:
    """One generated file: its path under deploy/k8s/, its object, and a line on what it is."""

    path: str
    document: dict[str, Any]
    about: str


def _namespace() -> dict[str, Any]:
    # vLLM's image runs as root, so the namespace enforces the baseline profile, not restricted.
    security = {"pod-security.kubernetes.io/enforce": "baseline"}
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {**PART_OF, **security}},
    }


def _workers(config: ModelsConfig, image: str) -> list[Manifest]:
    manifests = []
    for model in config.models:
        if launched_count(model) == 0:  # attached (`url:`) workers only: nothing runs here
            continue
        name = vllm_name(model)
        manifests += [
            Manifest(
                f"{name}-statefulset.yaml",
                vllm_statefulset(model, image),
                f"vLLM OpenAI servers of model {model.name}: one pod per launched worker.",
            ),
            Manifest(
                f"{name}-service.yaml",
                vllm_service(model),
                f"Headless Service: a stable DNS name for each vLLM pod of model {model.name}.",
            ),
        ]
    return manifests


def _gateway(config: ModelsConfig) -> list[Manifest]:
    models_yaml = gateway_models(config)
    return [
        Manifest(
            "gateway-models.yaml",
            models_configmap(models_yaml),
            "The gateway's models.yaml: each model's vLLM pods are found through its headless "
            "Service (DNS).",
        ),
        Manifest(
            "gateway-deployment.yaml",
            gateway_deployment(models_yaml),
            f"The gateway. Its API keys come from a Secret you create:\n  kubectl -n {NAMESPACE} "
            f"create secret generic {KEYS_SECRET} --from-file=keys.yaml=configs/keys.yaml",
        ),
        Manifest("gateway-service.yaml", gateway_service(), "The gateway's Service (port 80)."),
        Manifest("gateway-pdb.yaml", gateway_pdb(), "At most one gateway pod down at a time."),
        Manifest("gateway-hpa.yaml", gateway_hpa(), "Gateway pods follow their CPU use."),
    ]


def base_manifests(
    config: ModelsConfig, versions: ImageVersions, dashboard_json: str
) -> list[Manifest]:
    """Every object of the base, in the order the kustomization lists them."""
    return [
        Manifest("namespace.yaml", _namespace(), "The namespace everything runs in."),
        *_workers(config, versions.vllm),
        *_gateway(config),
        Manifest("redis-statefulset.yaml", redis_statefulset(versions.redis), _REDIS_NOTE),
        Manifest("redis-service.yaml", redis_service(), "Redis' Service, for the gateway."),
        Manifest(
            "networkpolicy-vllm.yaml",
            vllm_network_policy(),
            "Only gateway pods (and Prometheus) reach the vLLM servers.",
        ),
        Manifest(
            "networkpolicy-redis.yaml", redis_network_policy(), "Only gateway pods reach Redis."
        ),
        Manifest(
            "monitoring-servicemonitor.yaml", service_monitor(), "Prometheus scrapes the gateway."
        ),
        Manifest("monitoring-podmonitor.yaml", pod_monitor(), "Prometheus scrapes vLLM's pods."),
        Manifest(
            "monitoring-alerts.yaml",
            prometheus_rule(),
            "The alert rules of deploy/prometheus/alerts.yml, from workers/alerts.py.",
        ),
        Manifest(
            "monitoring-dashboard.yaml",
            dashboard_configmap(dashboard_json),
            "The Grafana dashboard of deploy/grafana/dashboards/gateway.json.",
        ),
    ]


def kustomization(manifests: list[Manifest]) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": [manifest.path for manifest in manifests],
    }


def keda_manifests(config: ModelsConfig) -> list[Manifest]:
    """The KEDA component's files, paths under deploy/k8s/ (its kustomization comes last)."""
    scaled = [
        Manifest(
            f"{KEDA_DIR}/{vllm_name(model)}-scaledobject.yaml",
            scaled_object(model),
            f"KEDA scales model {model.name}'s vLLM pods on the requests the gateways hold.",
        )
        for model in config.models
        if launched_count(model) > 0
    ]
    # KEDA owns the vLLM replica counts: an apply of the base must not reset them.
    drop_replicas = {
        "target": {"kind": "StatefulSet", "labelSelector": _selector(VLLM_SELECTOR)},
        "patch": "- op: remove\n  path: /spec/replicas\n",
    }
    component = {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": [m.path.removeprefix(f"{KEDA_DIR}/") for m in scaled],
        # The gateway follows each model's Service (DNS), so its models file stays as it is.
        "patches": [drop_replicas],
    }
    about = "Optional KEDA autoscaling of the vLLM pods: add as a component in an overlay."
    return [*scaled, Manifest(f"{KEDA_DIR}/kustomization.yaml", component, about)]


def _selector(match: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in match.items())
