"""Rendering compose.gpu.yml and prometheus.yml from configs/models.yaml (workers/render.py).

The drift tests fail when a checked-in file differs from a fresh render; re-render with
`python -m workers render` (or `make compose`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.errors import ConfigError
from workers.__main__ import main as workers_main
from workers.flags import KV_EVENTS_PORT, kv_events_config
from workers.render import (
    ALERTS_FILE,
    COMPOSE_FILE,
    DASHBOARD_FILE,
    PROMETHEUS_FILE,
    Deployment,
    render_all,
)
from workers.versions import VERSIONS_FILE, ImageVersions, load_versions

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "models.yaml"
EXAMPLE_8_GPU = ROOT / "configs" / "examples" / "8-gpu.yaml"
RERENDER_HINT = "compose files are stale: run `python -m workers render` (or `make compose`)"


def _rendered(config: Path = DEFAULT_CONFIG) -> dict[Path, str]:
    return render_all(Deployment.load(config, ROOT))


def _compose(config: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(_rendered(config)[COMPOSE_FILE])
    return document


def _deployment_in(tmp_path: Path, models: str) -> Deployment:
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "models.yaml"
    config.write_text(models)
    return Deployment.load(config, tmp_path)


@pytest.mark.parametrize(
    "relative", [COMPOSE_FILE, PROMETHEUS_FILE, ALERTS_FILE, DASHBOARD_FILE], ids=str
)
def test_checked_in_file_matches_a_fresh_render(relative: Path) -> None:
    checked_in = (ROOT / relative).read_text(encoding="utf-8")
    assert checked_in == _rendered()[relative], f"{relative}: {RERENDER_HINT}"


def test_render_check_flags_a_stale_file_and_render_fixes_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "deploy" / "prometheus").mkdir(parents=True)
    config = tmp_path / "configs" / "models.yaml"
    config.write_text(DEFAULT_CONFIG.read_text())
    args = ["render", "--config", str(config), "--root", str(tmp_path)]
    assert workers_main([*args, "--check"]) == 1
    assert "compose.gpu.yml differs from a fresh render" in capsys.readouterr().err
    assert workers_main(args) == 0
    assert workers_main([*args, "--check"]) == 0
    assert (tmp_path / COMPOSE_FILE).read_text() == _rendered()[COMPOSE_FILE]


def test_render_refuses_a_broken_placement_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "models.yaml"
    config.write_text(
        "models: [{name: a, model: x, tensor_parallel_size: 2,"
        " workers: [{name: a-0, gpus: [0], port: 8101}]}]"
    )
    assert workers_main(["render", "--config", str(config), "--root", str(tmp_path)]) == 1
    assert "models[0] (name=a).workers[0] (name=a-0).gpus" in capsys.readouterr().err
    assert not (tmp_path / COMPOSE_FILE).exists()


def test_generated_files_say_they_are_generated_and_how_to_rerender() -> None:
    rendered = _rendered()
    for path in (COMPOSE_FILE, PROMETHEUS_FILE):
        header = rendered[path].split("\n", 3)[:3]
        assert any("GENERATED from configs/models.yaml" in line for line in header)
        assert any("python -m workers render" in line for line in header)
    header = rendered[ALERTS_FILE].split("\n", 3)[:3]
    assert any("GENERATED from workers/alerts.py" in line for line in header)
    assert any("python -m workers render" in line for line in header)
    description = json.loads(rendered[DASHBOARD_FILE])["description"]
    assert "GENERATED from workers/dashboard.py" in description
    assert "python -m workers render" in description


def test_one_vllm_service_per_launched_worker_with_the_models_flags() -> None:
    services = _compose(EXAMPLE_8_GPU)["services"]
    workers = {name for name, s in services.items() if "vllm/vllm-openai" in s["image"]}
    assert workers == {"qwen32b-0", "mistral24b-0"} | {f"llama8b-{i}" for i in range(4)}
    command = services["qwen32b-0"]["command"]
    assert command == [
        "--model", "Qwen/Qwen2.5-32B-Instruct",
        "--served-model-name", "qwen2.5-32b-instruct",
        "--port", "8101",
        "--tensor-parallel-size", "2",
        "--max-model-len", "32768",
        "--gpu-memory-utilization", "0.9",
        "--kv-events-config", kv_events_config(KV_EVENTS_PORT),
    ]  # fmt: skip
    assert services["llama8b-3"]["command"][-2:] == ["--max-num-seqs", "256"]


def test_workers_are_pinned_to_their_gpus_without_cuda_visible_devices() -> None:
    services = _compose(EXAMPLE_8_GPU)["services"]
    expected = {"qwen32b-0": ["0", "1"], "mistral24b-0": ["2", "3"], "llama8b-2": ["6"]}
    for name, device_ids in expected.items():
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "device_ids": device_ids, "capabilities": ["gpu"]}
        assert "CUDA_VISIBLE_DEVICES" not in str(services[name].get("environment"))


def test_worker_service_is_private_health_gated_and_shares_memory() -> None:
    worker = _compose()["services"]["llama-0"]
    assert "ports" not in worker  # reached on the compose network only
    assert worker["expose"] == ["8102"]
    assert worker["ipc"] == "host"
    assert worker["environment"] == {
        "HF_TOKEN": "${HF_TOKEN:-}",
        "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "75",  # longer than the gateway keeps idle connections
        "VLLM_ENABLE_RESPONSES_API_STORE": "${VLLM_ENABLE_RESPONSES_API_STORE:-0}",
    }
    assert "hf-cache:/root/.cache/huggingface" in worker["volumes"]
    check = worker["healthcheck"]
    assert "http://127.0.0.1:8102/health" in check["test"][-1]
    assert int(check["start_period"].removesuffix("s")) >= 900  # download + load + warm-up
    assert worker["restart"] == "unless-stopped"
    assert int(worker["stop_grace_period"].removesuffix("s")) >= 30


def test_lora_worker_loads_its_adapters_mounted_and_may_load_more_at_run_time() -> None:
    services = _compose()["services"]
    qwen = services["qwen-0"]
    assert qwen["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "./adapters:/adapters:ro" in qwen["volumes"]
    command = qwen["command"]
    modules = command.index("--lora-modules")
    assert command[modules - 1] == "--enable-lora"
    assert command[modules + 1] == "qwen2.5-1.5b-sql-lora=/adapters/qwen2.5-1.5b-sql-lora"
    llama = services["llama-0"]
    assert "--enable-lora" not in llama["command"]
    assert not any("adapters" in volume for volume in llama["volumes"])


def test_embedding_worker_runs_the_pooling_runner() -> None:
    embed = _compose()["services"]["bge-0"]
    command = embed["command"]
    assert command[command.index("--runner") + 1] == "pooling"
    assert "VLLM_ENABLE_RESPONSES_API_STORE" not in embed["environment"]  # no Responses there
    assert "--runner" not in _compose()["services"]["llama-0"]["command"]


def test_gateway_service_reaches_workers_by_name_and_reads_the_config_read_only() -> None:
    gateway = _compose(EXAMPLE_8_GPU)["services"]["gateway"]
    env = gateway["environment"]
    assert env["GATEWAY_WORKER_URL_TEMPLATE"] == "http://{name}:{port}"
    assert env["GATEWAY_REDIS_URL"] == "redis://redis:6379/0"
    assert env["GATEWAY_HOST"] == "0.0.0.0"
    assert env["GATEWAY_CONFIG"] == "/etc/gateway/examples/8-gpu.yaml"
    assert env["GATEWAY_KEYS_FILE"] == "/etc/gateway/keys.yaml"
    assert gateway["volumes"] == ["./configs:/etc/gateway:ro"]
    assert gateway["build"]["dockerfile"] == "deploy/Dockerfile"
    assert gateway["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_every_image_comes_from_deploy_versions_yaml() -> None:
    versions = load_versions()
    pinned = set(versions.images().values())
    compose = _compose()
    images = {
        service["image"] for name, service in compose["services"].items() if name != "gateway"
    }
    assert images <= pinned
    assert compose["services"]["gateway"]["build"]["args"] == {"PYTHON_IMAGE": versions.python}
    # The Dockerfile takes its base from the build argument; no second place names a tag.
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE) == ["${PYTHON_IMAGE}"] * 2


@pytest.mark.parametrize("image", ["redis", "redis:latest", "registry:5000/redis"])
def test_versions_reject_unpinned_images(image: str) -> None:
    fields = load_versions().model_dump()
    with pytest.raises(ValueError, match="pin"):
        ImageVersions.model_validate({**fields, "redis": image})


def test_versions_accept_a_digest(tmp_path: Path) -> None:
    text = VERSIONS_FILE.read_text().replace(
        "redis: redis:7.4.6-alpine", "redis: redis@sha256:" + "a" * 64
    )
    (tmp_path / "versions.yaml").write_text(text)
    assert load_versions(tmp_path / "versions.yaml").redis.startswith("redis@sha256:")


def test_prometheus_scrapes_gateway_every_worker_and_dcgm() -> None:
    document = yaml.safe_load(_rendered(EXAMPLE_8_GPU)[PROMETHEUS_FILE])
    jobs = {job["job_name"]: job["static_configs"] for job in document["scrape_configs"]}
    assert jobs["gateway"] == [{"targets": ["gateway:8000"]}]
    assert jobs["dcgm"] == [{"targets": ["dcgm-exporter:9400"]}]
    targets = {c["targets"][0]: c["labels"] for c in jobs["vllm"]}
    assert len(targets) == 6
    assert targets["llama8b-1:8104"] == {"model": "llama-3.1-8b-instruct", "worker": "llama8b-1"}
    # Relative to prometheus.yml: deploy/prometheus/alerts.yml, /etc/prometheus/ in compose.
    assert document["rule_files"] == ["alerts.yml"]


def test_attached_workers_are_scraped_at_their_url_but_not_run(tmp_path: Path) -> None:
    deployment = _deployment_in(
        tmp_path,
        """
models:
  - name: m
    model: x
    workers:
      - {name: m-0, gpus: [0], port: 8101}
      - {name: Far_Away, url: "https://vllm.example:8443/prefix"}
      - {name: near, url: "http://[fd00::7]"}
""",
    )
    files = render_all(deployment)
    assert set(yaml.safe_load(files[COMPOSE_FILE])["services"]) == {
        "gateway", "m-0", "redis", "prometheus", "dcgm-exporter", "grafana",
    }  # fmt: skip
    (_, vllm, _) = yaml.safe_load(files[PROMETHEUS_FILE])["scrape_configs"]
    targets = {c["targets"][0]: c["labels"] for c in vllm["static_configs"]}
    assert targets["vllm.example:8443"]["__scheme__"] == "https"
    assert targets["vllm.example:8443"]["__metrics_path__"] == "/prefix/metrics"
    assert targets["[fd00::7]:80"]["__metrics_path__"] == "/metrics"


def test_dns_workers_are_scraped_at_every_address(tmp_path: Path) -> None:
    deployment = _deployment_in(
        tmp_path,
        """
models:
  - name: m
    model: x
    workers:
      - {name: m-0, gpus: [0], port: 8101}
      - {name: pool, dns: "vllm.example:8000"}
""",
    )
    jobs = yaml.safe_load(render_all(deployment)[PROMETHEUS_FILE])["scrape_configs"]
    (vllm,) = [j for j in jobs if j["job_name"] == "vllm"]
    assert [c["labels"]["worker"] for c in vllm["static_configs"]] == ["m-0"]
    (found,) = [j for j in jobs if "dns_sd_configs" in j]
    assert found["dns_sd_configs"] == [{"names": ["vllm.example"], "type": "A", "port": 8000}]
    relabel = {r["target_label"]: r for r in found["relabel_configs"]}
    assert relabel["job"]["replacement"] == "vllm"
    assert relabel["model"]["replacement"] == "m"
    # The gateway's name for the address: pool@10.0.0.5:8000 for the target 10.0.0.5:8000.
    assert relabel["worker"]["source_labels"] == ["__address__"]
    assert relabel["worker"]["replacement"] == "pool@$1"


def test_dollar_signs_in_vllm_args_reach_vllm_literally(tmp_path: Path) -> None:
    deployment = _deployment_in(
        tmp_path,
        "models: [{name: m, model: x, vllm_args: ['--chat-template', 'a$b'],"
        " workers: [{name: m-0, gpus: [0], port: 8101}]}]",
    )
    command = yaml.safe_load(render_all(deployment)[COMPOSE_FILE])["services"]["m-0"]["command"]
    assert command[-1] == "a$$b"  # compose turns $$ back into $


def test_models_file_outside_configs_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(DEFAULT_CONFIG.read_text())
    with pytest.raises(ConfigError, match="must be under"):
        render_all(Deployment.load(config, ROOT))
