"""Kubernetes objects for the gateway: its models.yaml (ConfigMap), Deployment, Service, disruption
budget, autoscaler, and the network policies that let only the gateway reach vLLM and Redis.
Pure: each function returns one object as plain dicts.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from gateway.config.models import ModelsConfig
from workers.compose import GATEWAY_IMAGE, GATEWAY_PORT
from workers.k8s import (
    GATEWAY,
    PART_OF,
    REDIS,
    REDIS_PORT,
    VLLM_SELECTOR,
    http_probe,
    labels,
    launched_count,
    metadata,
    restricted_container,
    restricted_pod,
    service,
    service_dns,
    vllm_name,
)
from workers.lifecycle import GATEWAY_DRAIN_SECONDS, GATEWAY_STOP_GRACE_SECONDS

MODELS_CONFIGMAP = "gateway-models"
# Created by the operator from their keys file, never rendered (README "Kubernetes").
KEYS_SECRET = "gateway-keys"  # noqa: S105 (the Secret's name)
CONFIG_DIR = "/etc/gateway/config"
KEYS_DIR = "/etc/gateway/keys"
MODELS_CHECKSUM = "llm-gateway/models-sha256"
# Where Prometheus runs: allowed to scrape vLLM's /metrics through the network policy.
PROMETHEUS_NAMESPACE = "monitoring"
# Before SIGTERM: time for the endpoint removal to reach kube-proxy and ingress controllers, so no
# new request arrives at a pod that has begun to drain.
PRESTOP_SECONDS = 10
PROCESSES = 2  # gateway processes per pod, one per requested core
MIN_REPLICAS = 2
MAX_REPLICAS = 10
CPU_TARGET_PERCENT = 70
# The image's user (deploy/Dockerfile).
GATEWAY_UID = 10001


def gateway_models(config: ModelsConfig) -> str:
    """The models.yaml the gateway reads in the cluster: a model's launched workers become one
    `dns` worker, its vLLM headless Service, so the gateway follows the pods as they come and go
    (the StatefulSet's replicas, or KEDA); attached workers stay as they are.

    The one place that says how the gateway finds vLLM pods.
    """
    models = []
    for model in config.models:
        found = [{"name": vllm_name(model), "dns": service_dns(model)}]
        pods = found if launched_count(model) > 0 else []
        attached = [
            w.model_dump(mode="json", exclude_defaults=True)
            for w in model.workers
            if not w.launched
        ]
        fields = model.model_dump(mode="json", exclude_defaults=True, exclude={"workers"})
        models.append({**fields, "workers": pods + attached})
    return yaml.safe_dump({"models": models}, sort_keys=False, width=1000)


def models_configmap(models_yaml: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(MODELS_CONFIGMAP, labels(GATEWAY)),
        "data": {"models.yaml": models_yaml},
    }


def _gateway_env() -> list[dict[str, str]]:
    env = {
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": str(GATEWAY_PORT),
        "GATEWAY_DRAIN_TIMEOUT": str(GATEWAY_DRAIN_SECONDS),
        "GATEWAY_CONFIG": f"{CONFIG_DIR}/models.yaml",
        # A directory mount: an updated Secret reaches the pod and the gateway reloads the keys.
        "GATEWAY_KEYS_FILE": f"{KEYS_DIR}/keys.yaml",
        "GATEWAY_REDIS_URL": f"redis://{REDIS}:{REDIS_PORT}/0",
        "GATEWAY_PROCESSES": str(PROCESSES),
    }
    return [{"name": name, "value": value} for name, value in env.items()]


def _gateway_container() -> dict[str, Any]:
    return {
        "name": GATEWAY,
        "image": GATEWAY_IMAGE,
        "env": _gateway_env(),
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT}],
        # No CPU limit: throttling would add latency to every relayed token.
        "resources": {
            "requests": {"cpu": str(PROCESSES), "memory": "1Gi"},
            "limits": {"memory": "2Gi"},
        },
        "readinessProbe": http_probe("/ready", 5, 2, timeout=3),
        "livenessProbe": http_probe("/health", 10, 3, timeout=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "securityContext": restricted_container(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True},
            # The metrics of several processes are files (prometheus_client's multi-process mode).
            {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 (an emptyDir of its own)
        ],
    }


def models_checksum(models_yaml: str) -> dict[str, str]:
    """The gateway pods' annotation that changes with the models file, so pods restart on it."""
    return {MODELS_CHECKSUM: hashlib.sha256(models_yaml.encode()).hexdigest()}


def gateway_deployment(models_yaml: str) -> dict[str, Any]:
    """No `replicas`: the autoscaler owns the count (at least MIN_REPLICAS), and an apply of this
    file must not reset it."""
    pod_labels = labels(GATEWAY)
    pod_spec = {
        # Service links would set GATEWAY_PORT=tcp://... for the `gateway` Service.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        # preStop, then SIGTERM and uvicorn's drain of open streams, then SIGKILL.
        "terminationGracePeriodSeconds": PRESTOP_SECONDS + GATEWAY_STOP_GRACE_SECONDS,
        "securityContext": restricted_pod(GATEWAY_UID),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": pod_labels},
            }
        ],
        "containers": [_gateway_container()],
        "volumes": [
            {"name": "config", "configMap": {"name": MODELS_CONFIGMAP}},
            {"name": "keys", "secret": {"secretName": KEYS_SECRET}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(GATEWAY, pod_labels),
        "spec": {
            "selector": {"matchLabels": pod_labels},
            # A new pod is ready before an old one drains.
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": models_checksum(models_yaml)},
                "spec": pod_spec,
            },
        },
    }


def gateway_service() -> dict[str, Any]:
    return service(GATEWAY, labels(GATEWAY), 80)


def gateway_pdb() -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(GATEWAY, labels(GATEWAY)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(GATEWAY)}},
    }


def gateway_hpa() -> dict[str, Any]:
    cpu = {"type": "Utilization", "averageUtilization": CPU_TARGET_PERCENT}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(GATEWAY, labels(GATEWAY)),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY},
            "minReplicas": MIN_REPLICAS,
            "maxReplicas": MAX_REPLICAS,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": cpu}}],
        },
    }


def _only_gateway(
    name: str, selector: dict[str, str], ports: list[int | str], scraped: bool
) -> dict[str, Any]:
    port = ports[0]
    allowed = [{"port": each} for each in ports]
    rules = [{"from": [{"podSelector": {"matchLabels": labels(GATEWAY)}}], "ports": allowed}]
    if scraped:
        monitoring = {"kubernetes.io/metadata.name": PROMETHEUS_NAMESPACE}
        rules.append(
            {
                "from": [{"namespaceSelector": {"matchLabels": monitoring}}],
                "ports": [{"port": port}],
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name, dict(PART_OF)),
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def vllm_network_policy() -> dict[str, Any]:
    """Only gateway pods reach the vLLM servers (their API and KV-cache events; and
    Prometheus, for /metrics)."""
    return _only_gateway(
        "vllm-from-gateway", dict(VLLM_SELECTOR), ["http", "kv-events"], scraped=True
    )


def redis_network_policy() -> dict[str, Any]:
    return _only_gateway("redis-from-gateway", labels(REDIS), ["redis"], scraped=False)
