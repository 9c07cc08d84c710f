"""Kubernetes objects for the vLLM workers and Redis, and the names, labels and pieces every object
of the kustomize base (deploy/k8s/) shares. Pure: each function returns one object as plain dicts.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from gateway.config.models import ModelConfig, ModelsConfig
from workers.compose import ADAPTERS_DIR, HF_CACHE, REDIS_COMMAND, VLLM_CACHE, escape_dollars
from workers.cpu_plan import world_size
from workers.flags import KV_EVENTS_PORT, vllm_env, vllm_flags
from workers.lifecycle import WORKER_START_SECONDS, WORKER_STOP_GRACE_SECONDS

NAMESPACE = "llm-gateway"
PART_OF = {"app.kubernetes.io/part-of": "llm-gateway"}
GATEWAY = "gateway"
REDIS = "redis"
REDIS_PORT = 6379
# Every vLLM pod has its own address, so all listen on one port (compose gives each its own).
VLLM_PORT = 8000
VLLM_SELECTOR = {"app.kubernetes.io/name": "vllm"}
# The served model name, for Prometheus' `model` label (a pod label could not hold every name).
MODEL_ANNOTATION = "llm-gateway/model"
# Created by the operator, never rendered (README "Kubernetes"): optional, for gated models.
HF_TOKEN_SECRET = "hf-token"  # noqa: S105 (the Secret's name, not a token)
# Also the operator's: a claim holding the LoRA adapters named by a local path (README
# "LoRA adapters"), mounted read-only at /adapters in the pods of models that use adapters.
ADAPTERS_CLAIM = "lora-adapters"
# Each pod's Hugging Face and vLLM compile caches, on its own volume: ReadWriteOnce suffices.
CACHE_SIZE = "200Gi"
# PyTorch passes tensors between the ranks of one pod through /dev/shm; the container default
# (64 MB) is far too small.
SHM_PER_GPU = 2
PROBE_PERIOD_SECONDS = 10
# A StatefulSet's pods carry the label controller-revision-hash = "<name>-<10 characters>",
# which must fit in a 63-character label value.
_MAX_NAME = 52


def labels(name: str, **more: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, **more, **PART_OF}


def metadata(name: str, object_labels: dict[str, str], **more: Any) -> dict[str, Any]:
    return {"name": name, "labels": object_labels, **more}


def vllm_name(model: ModelConfig) -> str:
    """The model's StatefulSet and headless Service: `vllm-` and its name as a DNS label (a name
    too long for one is cut, with a short hash of the whole name)."""
    name = "vllm-" + re.sub(r"[^a-z0-9]+", "-", model.name.lower()).strip("-")
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(model.name.encode()).hexdigest()[:6]
    return f"{name[: _MAX_NAME - 7].rstrip('-')}-{digest}"


def k8s_errors(config: ModelsConfig) -> list[str]:
    """Problems that only matter in Kubernetes: two models whose object names would be one, and
    an attached worker named like a model's vLLM Service (the gateway's name for its pods)."""
    first: dict[str, str] = {}
    errors = []
    for index, model in enumerate(config.models):
        name = vllm_name(model)
        earlier = first.setdefault(name, model.name)
        if earlier != model.name:
            errors.append(
                f"models[{index}] (name={model.name}).name: in Kubernetes it becomes {name!r}, "
                f"as model {earlier!r} does; rename one"
            )
    services = {vllm_name(model) for model in config.models if launched_count(model) > 0}
    for index, model in enumerate(config.models):
        for w_index, worker in enumerate(model.workers):
            if not worker.launched and worker.name in services:
                errors.append(
                    f"models[{index}] (name={model.name}).workers[{w_index}] (name={worker.name})"
                    ".name: in Kubernetes the gateway gives a model's vLLM pods this name; "
                    "rename the worker"
                )
    return errors


def vllm_labels(model: ModelConfig) -> dict[str, str]:
    return labels("vllm", **{"app.kubernetes.io/instance": vllm_name(model)})


def launched_count(model: ModelConfig) -> int:
    """Replicas of the model's vLLM server: one per launched (`gpus`) worker in models.yaml."""
    return sum(1 for worker in model.workers if worker.launched)


def service_dns(model: ModelConfig) -> str:
    """What the gateway resolves to find the model's vLLM pods: its headless Service, whose name
    has one A record per ready pod (in the same namespace: the pod's DNS search list completes
    it)."""
    return f"{vllm_name(model)}:{VLLM_PORT}"


def http_probe(path: str, period: int, failures: int, timeout: int = 5) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
    }


def restricted_container() -> dict[str, Any]:
    """The container securityContext of the Pod Security Standards' `restricted` profile."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def restricted_pod(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def service(
    name: str, selector: dict[str, str], port: int, port_name: str = "http", headless: bool = False
) -> dict[str, Any]:
    """A Service; a headless one gives each ready pod of a StatefulSet a DNS name of its own,
    `<pod>.<service>`."""
    spec: dict[str, Any] = {"clusterIP": "None"} if headless else {}
    spec["selector"] = selector
    spec["ports"] = [{"name": port_name, "port": port, "targetPort": port_name}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, {**selector, **PART_OF}),
        "spec": spec,
    }


def uses_adapters(model: ModelConfig) -> bool:
    return bool(model.adapters) or model.runtime_lora


def _vllm_container(model: ModelConfig, image: str) -> dict[str, Any]:
    worker = next(w for w in model.workers if w.launched)
    gpus = world_size(model)
    token = {"name": HF_TOKEN_SECRET, "key": "token", "optional": True}
    env: list[dict[str, Any]] = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": token}}]
    env += [{"name": name, "value": value} for name, value in vllm_env(model).items()]
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},  # noqa: S108 (in the container)
        {"name": "cache", "mountPath": HF_CACHE, "subPath": "huggingface"},
        {"name": "cache", "mountPath": VLLM_CACHE, "subPath": "vllm"},
    ]
    if uses_adapters(model):
        mounts.append({"name": "adapters", "mountPath": ADAPTERS_DIR, "readOnly": True})
    return {
        "name": "vllm",
        "image": image,
        # The image's entrypoint is the OpenAI server; these are its flags, as in compose.
        "args": [escape_dollars(flag) for flag in vllm_flags(model, worker, port=VLLM_PORT)],
        "env": env,
        "ports": [
            {"name": "http", "containerPort": VLLM_PORT},
            {"name": "kv-events", "containerPort": KV_EVENTS_PORT},
        ],
        # Starting points: host memory holds the weights while they load. Extended resources
        # (GPUs) are set as limits only; the request follows the limit.
        "resources": {
            "requests": {"cpu": str(2 * gpus), "memory": f"{16 * gpus}Gi"},
            "limits": {"nvidia.com/gpu": gpus},
        },
        "volumeMounts": mounts,
        # Failures before the first 200 don't count until the weights had time to load.
        "startupProbe": http_probe(
            "/health", PROBE_PERIOD_SECONDS, WORKER_START_SECONDS // PROBE_PERIOD_SECONDS
        ),
        "readinessProbe": http_probe("/health", PROBE_PERIOD_SECONDS, 3),
        "livenessProbe": http_probe("/health", 15, 3),
    }


def vllm_statefulset(model: ModelConfig, image: str) -> dict[str, Any]:
    """One model's vLLM servers: a pod per launched worker, each with all the model's GPUs.

    A StatefulSet, so each pod has a stable name the gateway routes to (and keeps health, load
    and metrics for) and its own cache volume, on any storage class.
    """
    name, pod_labels = vllm_name(model), vllm_labels(model)
    volumes: list[dict[str, Any]] = [
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": f"{SHM_PER_GPU * world_size(model)}Gi"},
        }
    ]
    if uses_adapters(model):
        claim_ref = {"claimName": ADAPTERS_CLAIM, "readOnly": True}
        volumes.append({"name": "adapters", "persistentVolumeClaim": claim_ref})
    pod_spec = {
        # Service links would put VLLM_*-named variables into the environment vLLM reads.
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": WORKER_STOP_GRACE_SECONDS,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [_vllm_container(model, image)],
        "volumes": volumes,
    }
    claim = {
        "metadata": {"name": "cache"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": CACHE_SIZE}},
        },
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(name, pod_labels),
        "spec": {
            "serviceName": name,
            "replicas": launched_count(model),
            # Start and replace pods side by side: each one loads its weights for minutes.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": pod_labels},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {MODEL_ANNOTATION: model.name}},
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [claim],
        },
    }


def vllm_service(model: ModelConfig) -> dict[str, Any]:
    return service(vllm_name(model), vllm_labels(model), VLLM_PORT, headless=True)


def redis_statefulset(image: str) -> dict[str, Any]:
    """One Redis: the per-key limits, leases and shared worker health, nothing persisted."""
    pod_labels = labels(REDIS)
    ping = {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5, "timeoutSeconds": 3}
    container = {
        "name": REDIS,
        "image": image,
        "args": list(REDIS_COMMAND),
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "readinessProbe": {**ping, "failureThreshold": 2},
        "livenessProbe": {**ping, "failureThreshold": 5},
        "securityContext": restricted_container(),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    pod_spec = {
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        # The `redis` user of the official image.
        "securityContext": restricted_pod(999),
        "containers": [container],
        "volumes": [{"name": "data", "emptyDir": {}}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(REDIS, pod_labels),
        "spec": {
            "serviceName": REDIS,
            "replicas": 1,
            "selector": {"matchLabels": pod_labels},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def redis_service() -> dict[str, Any]:
    # A ClusterIP: its address outlives the pod's, so clients need not look it up again.
    return service(REDIS, labels(REDIS), REDIS_PORT, port_name="redis")
