"""The gateway's Kubernetes objects (Deployment, Service, budget, autoscaler, network policies),
Redis, the monitoring objects and the KEDA component, as rendered into deploy/k8s/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from gateway.config.settings import Settings
from gateway.observe.metrics import Metrics
from tests.k8s_manifests import (
    DEFAULT_CONFIG,
    EXAMPLE_8_GPU,
    ROOT,
    Docs,
    container_of,
    objects,
    objects_in,
    render_files,
)
from workers.k8s import NAMESPACE
from workers.k8s_monitoring import demand_query
from workers.lifecycle import GATEWAY_DRAIN_SECONDS, GATEWAY_STOP_GRACE_SECONDS
from workers.render import (
    ALERTS_FILE,
    COMPOSE_FILE,
    DASHBOARD_FILE,
    K8S_DIR,
    Deployment,
    render_all,
)

# --- the gateway --------------------------------------------------------------------------


def test_gateway_runs_non_root_read_only_with_probes_and_resources() -> None:
    deployment = objects(render_files())[("Deployment", "gateway")]
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # deploy/Dockerfile's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}  # multi-process metrics
    assert pod["enableServiceLinks"] is False  # else GATEWAY_PORT=tcp://... from the Service


def test_gateway_pods_outlive_their_streams_on_shutdown() -> None:
    deployment = objects(render_files())[("Deployment", "gateway")]
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = container_of(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop > 0
    assert pod["terminationGracePeriodSeconds"] == pre_stop + GATEWAY_STOP_GRACE_SECONDS
    assert GATEWAY_STOP_GRACE_SECONDS > GATEWAY_DRAIN_SECONDS
    compose = yaml.safe_load(render_all(Deployment.load(DEFAULT_CONFIG, ROOT))[COMPOSE_FILE])
    assert compose["services"]["gateway"]["stop_grace_period"] == f"{GATEWAY_STOP_GRACE_SECONDS}s"


def test_drain_time_is_the_gateways_own_and_both_deployments_give_it_room() -> None:
    assert Settings().drain_timeout == GATEWAY_DRAIN_SECONDS  # one number, from the gateway
    deployment = objects(render_files())[("Deployment", "gateway")]
    env = {item["name"]: item["value"] for item in container_of(deployment)["env"]}
    assert env["GATEWAY_DRAIN_TIMEOUT"] == str(GATEWAY_DRAIN_SECONDS)
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
        GATEWAY_DRAIN_SECONDS
    )
    compose = yaml.safe_load((ROOT / "compose.gpu.yml").read_text())["services"]["gateway"]
    assert compose["environment"]["GATEWAY_DRAIN_TIMEOUT"] == str(GATEWAY_DRAIN_SECONDS)
    assert int(compose["stop_grace_period"].rstrip("s")) > GATEWAY_DRAIN_SECONDS


def test_gateway_reads_its_files_from_mounts_and_finds_redis() -> None:
    docs = objects(render_files())
    deployment = docs[("Deployment", "gateway")]
    container = container_of(deployment)
    env = {item["name"]: item["value"] for item in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert env["GATEWAY_CONFIG"] == mounts["config"]["mountPath"] + "/models.yaml"
    assert volumes["config"]["configMap"]["name"] == "gateway-models"
    assert env["GATEWAY_KEYS_FILE"] == mounts["keys"]["mountPath"] + "/keys.yaml"
    assert mounts["keys"]["readOnly"] is True
    assert volumes["keys"]["secret"] == {"secretName": "gateway-keys"}
    redis = docs[("Service", "redis")]["spec"]["ports"][0]["port"]
    assert env["GATEWAY_REDIS_URL"] == f"redis://redis:{redis}/0"
    assert int(env["GATEWAY_PROCESSES"]) >= 1


def test_gateway_pods_restart_when_the_models_file_changes(tmp_path: Path) -> None:
    def checksum(docs: Docs) -> str:
        template = docs[("Deployment", "gateway")]["spec"]["template"]
        return str(template["metadata"]["annotations"]["llm-gateway/models-sha256"])

    models = "models: [{name: m, model: x, workers: [{name: m-0, gpus: [0], port: 8101}]}]"
    first = checksum(objects_in(tmp_path / "a", models))
    second = checksum(objects_in(tmp_path / "b", models.replace("model: x", "model: y")))
    assert first != second


def test_gateway_scales_on_cpu_from_two_replicas_and_keeps_one_up() -> None:
    docs = objects(render_files())
    assert "replicas" not in docs[("Deployment", "gateway")]["spec"]  # the autoscaler's
    hpa = docs[("HorizontalPodAutoscaler", "gateway")]["spec"]
    assert hpa["minReplicas"] >= 2
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    pdb = docs[("PodDisruptionBudget", "gateway")]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == docs[("Service", "gateway")]["spec"]["selector"]


def test_only_gateway_pods_and_prometheus_reach_vllm_and_only_gateway_reaches_redis() -> None:
    docs = objects(render_files())
    gateway_pods = docs[("Deployment", "gateway")]["spec"]["template"]["metadata"]["labels"]
    vllm = docs[("NetworkPolicy", "vllm-from-gateway")]["spec"]
    pod_labels = docs[("StatefulSet", "vllm-qwen2-5-1-5b-instruct")]["spec"]["template"][
        "metadata"
    ]["labels"]
    assert vllm["podSelector"]["matchLabels"].items() <= pod_labels.items()
    sources = [peer for rule in vllm["ingress"] for peer in rule["from"]]
    assert sources == [
        {"podSelector": {"matchLabels": gateway_pods}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    redis = docs[("NetworkPolicy", "redis-from-gateway")]["spec"]
    assert redis["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": gateway_pods}}], "ports": [{"port": "redis"}]}
    ]


def test_redis_is_one_probed_pod_with_limits_and_nothing_persisted() -> None:
    statefulset = objects(render_files())[("StatefulSet", "redis")]
    container = container_of(statefulset)
    assert statefulset["spec"]["replicas"] == 1
    assert "volumeClaimTemplates" not in statefulset["spec"]
    assert container["args"] == ["redis-server", "--save", "", "--appendonly", "no"]
    assert "memory" in container["resources"]["limits"]
    assert container["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert "Sentinel" in render_files()[K8S_DIR / "redis-statefulset.yaml"].split("apiVersion")[0]


# --- monitoring and KEDA -----------------------------------------------------------------


def test_prometheus_rule_carries_the_same_alerts_as_compose() -> None:
    rule = objects(render_files())[("PrometheusRule", "llm-gateway")]
    assert rule["spec"] == yaml.safe_load((ROOT / ALERTS_FILE).read_text())


def test_dashboard_configmap_holds_the_grafana_dashboard() -> None:
    configmap = objects(render_files())[("ConfigMap", "gateway-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["gateway.json"])
    assert dashboard == json.loads((ROOT / DASHBOARD_FILE).read_text())


def test_monitors_scrape_gateway_and_vllm_with_the_alerts_job_and_model_labels() -> None:
    docs = objects(render_files())
    service = docs[("ServiceMonitor", "gateway")]["spec"]
    assert service["selector"]["matchLabels"] == docs[("Service", "gateway")]["metadata"]["labels"]
    assert service["endpoints"][0]["relabelings"] == [
        {"targetLabel": "job", "replacement": "gateway"}
    ]
    pods = docs[("PodMonitor", "vllm")]["spec"]
    template = docs[("StatefulSet", "vllm-qwen2-5-1-5b-instruct")]["spec"]["template"]["metadata"]
    assert pods["selector"]["matchLabels"].items() <= template["labels"].items()
    relabel = {r["targetLabel"]: r for r in pods["podMetricsEndpoints"][0]["relabelings"]}
    assert relabel["job"]["replacement"] == "vllm"
    # The gateway's name for an address it found through the Service: vllm-<model>@<ip>:8000.
    assert relabel["worker"]["sourceLabels"] == [
        "__meta_kubernetes_pod_label_app_kubernetes_io_instance",
        "__meta_kubernetes_pod_ip",
    ]
    assert (relabel["worker"]["separator"], relabel["worker"]["replacement"]) == ("@", "$1:8000")
    assert "app.kubernetes.io/instance" in template["labels"]
    (annotation,) = template["annotations"]  # the served name, any characters
    assert template["annotations"][annotation] == "qwen2.5-1.5b-instruct"
    assert relabel["model"]["sourceLabels"] == [
        "__meta_kubernetes_pod_annotation_" + annotation.replace("-", "_").replace("/", "_")
    ]


def test_keda_is_a_component_the_base_does_not_include() -> None:
    files = render_files()
    base = yaml.safe_load(files[K8S_DIR / "kustomization.yaml"])
    assert base["namespace"] == NAMESPACE
    listed = set(base["resources"])
    top = {p.name for p in files if p.parent == K8S_DIR and p.name != "kustomization.yaml"}
    assert listed == top
    assert not [name for name in listed if "keda" in name]
    component = yaml.safe_load(files[K8S_DIR / "keda" / "kustomization.yaml"])
    assert component["kind"] == "Component"
    in_keda = {p.name for p in files if p.parent == K8S_DIR / "keda"} - {"kustomization.yaml"}
    named = set(component["resources"]) | {p["path"] for p in component["patches"] if "path" in p}
    assert named == in_keda


def test_keda_scales_each_models_statefulset_on_its_gateway_demand() -> None:
    files = render_files(EXAMPLE_8_GPU)
    scaled = objects(files, keda=True)[("ScaledObject", "vllm-llama-3-1-8b-instruct")]["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "name": "vllm-llama-3-1-8b-instruct",
    }  # fmt: skip
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (4, 8)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    query = trigger["metadata"]["query"]
    assert 'sum(gateway_queue_depth{model="llama-3.1-8b-instruct"})' in query
    assert 'gateway_worker_inflight{model="llama-3.1-8b-instruct"}' in query
    # The gateway follows the Service's addresses (DNS): KEDA's pods need no models file of
    # their own, so the component leaves the gateway alone.
    assert ("ConfigMap", "gateway-models") not in objects(files, keda=True)
    component = yaml.safe_load(files[K8S_DIR / "keda" / "kustomization.yaml"])
    assert [p["target"]["kind"] for p in component["patches"]] == ["StatefulSet"]


def test_keda_queries_only_series_the_gateway_exports() -> None:
    families = {metric.name for metric in Metrics().registry.collect()}
    model = Deployment.load(DEFAULT_CONFIG, ROOT).config.models[0]
    used = set(re.findall(r"\b(gateway_[a-z_]+)\{", demand_query(model)))
    assert used == {"gateway_queue_depth", "gateway_worker_inflight"}
    assert used <= families
