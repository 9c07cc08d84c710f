"""Placement rules (gateway/placement.py) through `python -m workers check` and the gateway's start.

Each rule gets a config that breaks it; each message must name the model, the worker and the field.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import create_app
from gateway.config.errors import ConfigError
from gateway.config.models import parse_models_config
from gateway.config.placement import placement_errors
from gateway.config.settings import Settings
from workers.__main__ import main as workers_main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_8_GPU = ROOT / "configs" / "examples" / "8-gpu.yaml"


def _check(tmp_path: Path, text: str, *extra: str) -> int:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return workers_main(["check", "--config", str(path), *extra])


def test_default_config_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert workers_main(["check", "--config", str(ROOT / "configs" / "models.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


def test_8_gpu_example_passes_check_on_an_8_gpu_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert workers_main(["check", "--config", str(EXAMPLE_8_GPU), "--gpus", "8"]) == 0
    assert "on GPU(s) 0, 1, 2, 3, 4, 5, 6, 7" in capsys.readouterr().out


def test_8_gpu_example_has_two_tp2_models_and_four_single_gpu_replicas() -> None:
    config = parse_models_config(EXAMPLE_8_GPU.read_text())
    shapes = sorted(
        (m.tensor_parallel_size, len(m.workers), [len(w.gpus or []) for w in m.workers])
        for m in config.models
    )
    assert shapes == [(1, 4, [1, 1, 1, 1]), (2, 1, [2]), (2, 1, [2])]


BROKEN = {
    "duplicate worker name": (
        """
models:
  - {name: a, model: x, workers: [{name: w, gpus: [0], port: 8101}]}
  - {name: b, model: y, workers: [{name: w, gpus: [1], port: 8102}]}
""",
        "models[1] (name=b).workers[0] (name=w).name: name already used by worker 'w' of model 'a'",
    ),
    "duplicate port": (
        """
models:
  - name: a
    model: x
    workers:
      - {name: a-0, gpus: [0], port: 8101}
      - {name: a-1, gpus: [1], port: 8101}
""",
        "models[0] (name=a).workers[1] (name=a-1).port: port 8101 is already used by worker 'a-0'",
    ),
    "GPU shared by two workers": (
        """
models:
  - {name: a, model: x, workers: [{name: a-0, gpus: [0], port: 8101}]}
  - {name: b, model: y, workers: [{name: b-0, gpus: [0], port: 8102}]}
""",
        "models[1] (name=b).workers[0] (name=b-0).gpus: GPU 0 is already assigned to worker 'a-0'",
    ),
    "GPU listed twice in one worker": (
        """
models:
  - {name: a, model: x, tensor_parallel_size: 2, workers: [{name: a-0, gpus: [3, 3], port: 1}]}
""",
        "models[0] (name=a).workers[0] (name=a-0).gpus: GPU(s) [3] listed more than once",
    ),
    "fewer GPUs than tensor parallel ranks": (
        """
models:
  - {name: a, model: x, tensor_parallel_size: 2, workers: [{name: a-0, gpus: [0], port: 1}]}
""",
        "models[0] (name=a).workers[0] (name=a-0).gpus: 1 GPU(s) [0], but the model needs "
        "tensor_parallel_size 2 x pipeline_parallel_size 1 = 2",
    ),
    "more GPUs than tp x pp": (
        """
models:
  - name: a
    model: x
    tensor_parallel_size: 2
    pipeline_parallel_size: 2
    workers: [{name: a-0, gpus: [0, 1, 2, 3, 4, 5], port: 1}]
""",
        "models[0] (name=a).workers[0] (name=a-0).gpus: 6 GPU(s) [0, 1, 2, 3, 4, 5], but the "
        "model needs tensor_parallel_size 2 x pipeline_parallel_size 2 = 4",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_rejects_broken_placement_naming_model_worker_and_field(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, message = BROKEN[case]
    assert _check(tmp_path, text) == 1
    assert message in capsys.readouterr().err


def test_check_rejects_gpu_ids_beyond_the_hosts_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """
models:
  - {name: a, model: x, tensor_parallel_size: 2, workers: [{name: a-0, gpus: [2, 3], port: 1}]}
"""
    assert _check(tmp_path, text) == 0  # without --gpus the host's size is unknown
    assert _check(tmp_path, text, "--gpus", "3") == 1
    err = capsys.readouterr().err
    assert "models[0] (name=a).workers[0] (name=a-0).gpus: GPU(s) [3] do not exist" in err
    assert "3 GPU(s) (ids 0-2)" in err
    assert _check(tmp_path, text, "--gpus", "4") == 0


def test_check_reports_every_problem_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """
models:
  - {name: a, model: x, workers: [{name: w, gpus: [0], port: 1}, {name: w, gpus: [0], port: 1}]}
"""
    assert _check(tmp_path, text, "--gpus", "0") == 1
    err = capsys.readouterr().err
    assert "5 placement problem(s)" in err  # name, port, shared GPU, 2 x missing GPU
    for field in (".name:", ".port:", ".gpus: GPU 0 is already", "a host with 0 GPU(s) (none)"):
        assert field in err


def test_check_rejects_schema_errors_with_the_field_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "models: [{name: a, model: x, workers: [{name: w, gpus: [0], port: 0}]}]"
    assert _check(tmp_path, text) == 1
    assert "models[0] (name=a).workers[0] (name=w).port" in capsys.readouterr().err


def test_check_rejects_worker_names_that_cannot_be_compose_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """
models:
  - name: a
    model: x
    workers:
      - {name: Qwen_0, gpus: [0], port: 8101}
      - {name: redis, gpus: [1], port: 8102}
      - {name: Remote_OK, url: "http://10.0.0.1:8000"}
"""
    assert _check(tmp_path, text) == 1
    err = capsys.readouterr().err
    assert "models[0] (name=a).workers[0] (name=Qwen_0).name: in compose" in err
    assert "models[0] (name=a).workers[1] (name=redis).name: 'redis' is taken" in err
    assert "Remote_OK" not in err  # attached workers are not compose services


def test_attached_workers_need_no_gpus_or_ports() -> None:
    config = parse_models_config(
        """
models:
  - name: a
    model: x
    tensor_parallel_size: 4
    workers:
      - {name: r-0, url: "http://10.0.0.1:8000"}
      - {name: r-1, url: "http://10.0.0.2:8000"}
"""
    )
    assert placement_errors(config, gpus=0) == []


def test_gateway_refuses_to_start_on_a_broken_placement() -> None:
    config = parse_models_config(
        """
models:
  - {name: a, model: x, workers: [{name: a-0, gpus: [0], port: 8101}]}
  - {name: b, model: y, workers: [{name: b-0, gpus: [0], port: 8101}]}
"""
    )
    settings = Settings(auth_enabled=False)
    with pytest.raises(ConfigError) as caught:
        create_app(settings, config)
    message = str(caught.value)
    assert "models[1] (name=b).workers[0] (name=b-0).port: port 8101" in message
    assert "models[1] (name=b).workers[0] (name=b-0).gpus: GPU 0" in message


def test_gateway_ignores_the_hosts_gpu_count() -> None:
    # The gateway does not run on the GPU host, so it cannot know its size: only the CLI checks.
    config = parse_models_config(
        "models: [{name: a, model: x, workers: [{name: a-0, gpus: [99], port: 8101}]}]"
    )
    create_app(Settings(auth_enabled=False), config)
