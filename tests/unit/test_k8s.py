"""The Kubernetes base rendered from configs/models.yaml (workers/k8s*.py, deploy/k8s/): checked in
without drift, valid against Kubernetes' and the CRDs' schemas, one vLLM StatefulSet per model and
the gateway's models.yaml pointing at its pods. The gateway, Redis, monitoring and KEDA objects:
test_k8s_gateway.py; `kubectl kustomize`: tests/integration/test_k8s_kustomize.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config.errors import ConfigError
from gateway.config.models import parse_models_config
from gateway.config.placement import placement_errors
from tests.k8s_manifests import (
    DEFAULT_CONFIG,
    EXAMPLE_8_GPU,
    ROOT,
    container_of,
    gateway_models,
    objects,
    objects_in,
    problems,
    render_files,
)
from workers.__main__ import main as workers_main
from workers.k8s import vllm_name
from workers.lifecycle import WORKER_START_SECONDS
from workers.render import COMPOSE_FILE, K8S_DIR, Deployment, render_all, render_k8s

RERENDER_HINT = "deploy/k8s is stale: run `python -m workers render`"
# Patches and kustomizations are kustomize's input, not objects a cluster receives.
NOT_OBJECTS = {"kustomization.yaml", "gateway-checksum.yaml"}


# --- drift ---------------------------------------------------------------------------------


@pytest.mark.parametrize("relative", sorted(render_files()), ids=str)
def test_checked_in_k8s_file_matches_a_fresh_render(relative: Path) -> None:
    checked_in = (ROOT / relative).read_text(encoding="utf-8")
    assert checked_in == render_files()[relative], f"{relative}: {RERENDER_HINT}"


def test_no_generated_file_is_left_over_in_deploy_k8s() -> None:
    on_disk = {p.relative_to(ROOT) for p in (ROOT / K8S_DIR).rglob("*") if p.is_file()}
    assert on_disk - set(render_files()) == set(), RERENDER_HINT


def test_render_removes_the_files_of_a_removed_model_and_check_flags_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "models.yaml"
    config.write_text(EXAMPLE_8_GPU.read_text())
    args = ["render", "--config", str(config), "--root", str(tmp_path), "--target", "k8s"]
    assert workers_main(args) == 0
    assert not (tmp_path / COMPOSE_FILE).exists()  # --target k8s writes deploy/k8s only
    gone = tmp_path / K8S_DIR / "vllm-qwen2-5-32b-instruct-statefulset.yaml"
    assert gone.exists()
    config.write_text(DEFAULT_CONFIG.read_text())
    assert workers_main([*args, "--check"]) == 1
    assert f"{gone.relative_to(tmp_path)} differs" in capsys.readouterr().err
    assert workers_main(args) == 0
    assert not gone.exists()
    assert workers_main([*args, "--check"]) == 0


def test_render_target_compose_leaves_deploy_k8s_alone(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "models.yaml").write_text(DEFAULT_CONFIG.read_text())
    root = ["--config", str(tmp_path / "configs" / "models.yaml"), "--root", str(tmp_path)]
    assert workers_main(["render", *root, "--target", "compose"]) == 0
    assert (tmp_path / COMPOSE_FILE).exists()
    assert not (tmp_path / K8S_DIR).exists()


def test_default_render_writes_compose_and_k8s() -> None:
    files = render_all(Deployment.load(DEFAULT_CONFIG, ROOT))
    assert COMPOSE_FILE in files
    assert K8S_DIR / "kustomization.yaml" in files


# --- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [DEFAULT_CONFIG, EXAMPLE_8_GPU], ids=["default", "8-gpu"])
@pytest.mark.parametrize("keda", [False, True], ids=["base", "keda"])
def test_every_rendered_object_is_valid_against_its_schema(config: Path, keda: bool) -> None:
    files = render_files(config)
    folder = K8S_DIR / "keda" if keda else K8S_DIR
    docs = [
        yaml.safe_load(text)
        for path, text in files.items()
        if path.parent == folder and path.name not in NOT_OBJECTS
    ]
    assert len(docs) >= (2 if keda else 16)
    assert [p for doc in docs for p in problems(doc)] == []


def test_schemas_reject_unknown_fields_of_builtin_and_custom_kinds() -> None:
    # Guards the test above: a misspelt field fails in a built-in kind and in a CRD's.
    docs = objects(render_files())
    statefulset = docs[("StatefulSet", "vllm-qwen2-5-1-5b-instruct")]
    container_of(statefulset)["startupProbe"]["httpGet"]["paht"] = "/health"
    assert "'paht' was unexpected" in problems(statefulset)[0]
    monitor = docs[("PodMonitor", "vllm")]
    monitor["spec"]["podMetricsEndpoints"][0]["relabelling"] = []
    assert "'relabelling' was unexpected" in problems(monitor)[0]
    rule = docs[("PrometheusRule", "llm-gateway")]
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5
    assert problems(rule)


# --- vLLM ---------------------------------------------------------------------------------


def test_one_statefulset_per_model_with_a_replica_per_launched_worker_and_its_gpus() -> None:
    docs = objects(render_files(EXAMPLE_8_GPU))
    sets = {name: d for (kind, name), d in docs.items() if kind == "StatefulSet"}
    expected = {"vllm-qwen2-5-32b-instruct": (1, 2), "vllm-mistral-small-24b-instruct": (1, 2)}
    expected |= {"vllm-llama-3-1-8b-instruct": (4, 1), "redis": (1, 0)}
    for name, (replicas, gpus) in expected.items():
        assert sets[name]["spec"]["replicas"] == replicas
        limits = container_of(sets[name])["resources"]["limits"]
        assert limits.get("nvidia.com/gpu", 0) == gpus
    assert set(sets) == set(expected)


def test_vllm_runs_the_pinned_image_with_compose_flags_but_one_port() -> None:
    deployment = Deployment.load(EXAMPLE_8_GPU, ROOT)
    compose = yaml.safe_load(render_all(deployment, "compose")[COMPOSE_FILE])["services"]
    llama = vllm_name(deployment.config.models[2])
    container = container_of(objects(render_k8s(deployment))[("StatefulSet", llama)])
    assert container["image"] == deployment.versions.vllm == compose["llama8b-0"]["image"]
    flags = compose["llama8b-0"]["command"]
    port = flags.index("--port") + 1
    assert container["args"] == [*flags[:port], "8000", *flags[port + 1 :]]
    assert container["ports"] == [
        {"name": "http", "containerPort": 8000},
        {"name": "kv-events", "containerPort": 5557},  # the gateway's precise mode reads them
    ]


def test_vllm_pod_has_shm_a_cache_volume_an_optional_token_and_health_probes() -> None:
    statefulset = objects(render_files())[("StatefulSet", "vllm-llama-3-2-1b-instruct")]
    pod = statefulset["spec"]["template"]["spec"]
    container = container_of(statefulset)
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm"
    assert mounts["/root/.cache/huggingface"] == "cache"
    assert [c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]] == ["cache"]
    (token,) = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
    assert token["valueFrom"]["secretKeyRef"] == {
        "name": "hf-token",
        "key": "token",
        "optional": True,
    }
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= WORKER_START_SECONDS >= 1800
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["enableServiceLinks"] is False  # no VLLM_*-like variables from Services


def test_lora_pods_mount_the_adapters_claim_and_may_load_adapters_at_run_time() -> None:
    docs = objects(render_files())
    statefulset = docs[("StatefulSet", "vllm-qwen2-5-1-5b-instruct")]
    container = container_of(statefulset)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/adapters")
    assert mount["readOnly"] is True
    volume = next(
        v for v in statefulset["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    assert volume["persistentVolumeClaim"] == {"claimName": "lora-adapters", "readOnly": True}
    assert "--enable-lora" in container["args"]
    llama = container_of(docs[("StatefulSet", "vllm-llama-3-2-1b-instruct")])
    assert all(m["mountPath"] != "/adapters" for m in llama["volumeMounts"])


def test_dollar_signs_in_vllm_args_reach_vllm_literally(tmp_path: Path) -> None:
    docs = objects_in(
        tmp_path,
        "models: [{name: m, model: x, vllm_args: ['--chat-template', 'a$(b)'],"
        " workers: [{name: m-0, gpus: [0], port: 8101}]}]",
    )
    assert container_of(docs[("StatefulSet", "vllm-m")])["args"][-1] == "a$$(b)"


# --- the gateway's models.yaml ---------------------------------------------------------------


def test_gateway_follows_each_models_vllm_pods_through_its_headless_service() -> None:
    docs = objects(render_files(EXAMPLE_8_GPU))
    models = gateway_models(docs)
    llama = models["llama-3.1-8b-instruct"]
    name = "vllm-llama-3-1-8b-instruct"
    # One `dns` worker: every address of the Service is a worker (the pods the StatefulSet, or
    # KEDA, runs), found again every GATEWAY_DNS_INTERVAL seconds.
    assert [(w.name, w.dns, w.url) for w in llama.workers] == [(name, f"{name}:8000", None)]
    service = docs[("Service", name)]["spec"]
    assert service["clusterIP"] == "None"  # headless: one A record per ready pod
    assert not service.get("publishNotReadyAddresses")  # a pod not ready is not an address
    statefulset = docs[("StatefulSet", name)]["spec"]
    assert statefulset["serviceName"] == name
    assert service["selector"] == statefulset["template"]["metadata"]["labels"]


def test_gateway_models_file_is_valid_and_keeps_each_models_settings() -> None:
    text = objects(render_files(EXAMPLE_8_GPU))[("ConfigMap", "gateway-models")]["data"][
        "models.yaml"
    ]
    config = parse_models_config(text)
    assert placement_errors(config) == []
    qwen = config.model("qwen2.5-32b-instruct")
    assert qwen is not None
    assert (qwen.tensor_parallel_size, qwen.max_model_len) == (2, 32768)
    assert all(not w.launched for m in config.models for w in m.workers)


def test_attached_workers_run_nothing_and_stay_in_the_gateways_models(tmp_path: Path) -> None:
    docs = objects_in(
        tmp_path,
        """
models:
  - name: m
    model: x
    workers:
      - {name: m-0, gpus: [0], port: 8101}
      - {name: far, url: "https://vllm.example:8443"}
  - name: remote-only
    model: y
    workers: [{name: r-0, url: "http://10.0.0.7:8000"}]
""",
    )
    models = gateway_models(docs)
    assert [(w.dns, w.url) for w in models["m"].workers] == [
        ("vllm-m:8000", None),
        (None, "https://vllm.example:8443"),
    ]
    assert [w.url for w in models["remote-only"].workers] == ["http://10.0.0.7:8000"]
    assert {name for kind, name in docs if kind == "StatefulSet"} == {"vllm-m", "redis"}


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (  # two models whose objects would share one name
            "[{name: a.b, model: x, workers: [{name: w0, gpus: [0], port: 8101}]},"
            " {name: a-b, model: x, workers: [{name: w1, gpus: [1], port: 8102}]}]",
            r"models\[1\] \(name=a-b\).name: .*'vllm-a-b'",
        ),
        (  # an attached worker with the name the gateway gives a model's vLLM pods
            "[{name: m, model: x, workers: [{name: w0, gpus: [0], port: 8101},"
            " {name: vllm-m, url: 'http://10.0.0.7:8000'}]}]",
            r"workers\[1\] \(name=vllm-m\).name: .*vLLM pods",
        ),
    ],
    ids=["model-names", "worker-name"],
)
def test_names_that_clash_in_kubernetes_are_refused(
    tmp_path: Path, models: str, message: str
) -> None:
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "models.yaml"
    config.write_text(f"models: {models}")
    with pytest.raises(ConfigError, match=message):
        Deployment.load(config, tmp_path)


def test_a_long_model_name_is_cut_to_a_statefulset_name_with_a_hash(tmp_path: Path) -> None:
    long = "m" * 60
    docs = objects_in(
        tmp_path,
        f"models: [{{name: {long}, model: x, workers: [{{name: w0, gpus: [0], port: 8101}}]}}]",
    )
    (name,) = [n for kind, n in docs if kind == "StatefulSet" and n != "redis"]
    assert len(name) <= 52  # pods' controller-revision-hash label must fit in 63 characters
    assert name.startswith("vllm-mmm")
    assert [w.dns for w in gateway_models(docs)[long].workers] == [f"{name}:8000"]
