"""configs/models.yaml: the schema accepts what is documented and names the field it rejects."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.errors import ConfigError
from gateway.config.models import load_models_config, parse_models_config

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_loads_two_chat_models_an_embedding_model_and_an_adapter() -> None:
    config = load_models_config(ROOT / "configs" / "models.yaml")
    assert [m.runner for m in config.models] == ["generate", "generate", "pooling"]
    assert all(w.launched for m in config.models for w in m.workers)
    adapter = config.models[0].adapters[0].name
    base = config.base_of(adapter)
    assert base is not None
    assert base.runtime_lora
    assert max(len(m.workers) for m in config.models) == 2  # stored Responses pick one


def test_attached_worker_by_url() -> None:
    config = parse_models_config(
        "models: [{name: m, model: x, workers: [{name: w, url: 'http://10.0.0.5:8000/'}]}]"
    )
    worker = config.models[0].workers[0]
    assert (worker.launched, worker.url) == (False, "http://10.0.0.5:8000")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models: [{name: m, model: x, workers: [{name: w, gpus: [0], port: 1}]}], extra: 1",
            "extra",
        ),
        (
            "models: [{name: m, model: x, colour: red, workers: [{name: w, url: 'http://a'}]}]",
            "models[0] (name=m).colour",
        ),
        (
            "models: [{name: m, model: x, workers: [{name: w, gpus: [0]}]}]",
            "models[0] (name=m).workers[0] (name=w)",
        ),
        (
            "models: [{name: m, model: x, workers: [{name: w, url: 'ftp://a'}]}]",
            "models[0] (name=m).workers[0] (name=w).url",
        ),
        (
            "models: [{name: m, model: x, workers: [{name: w, url: 'http://a', port: 3}]}]",
            "drop `gpus`/`port`",
        ),
        ("models: [{name: m, model: x, workers: []}]", "models[0] (name=m).workers"),
        (
            "models: [{name: m, model: x, tensor_parallel_size: 0, workers: [{name: w, url: 'http://a'}]}]",
            "tensor_parallel_size",
        ),
        (
            "models: [{name: m, model: x, workers: [{name: w, url: 'http://a'}]},"
            " {name: m, model: y, workers: [{name: v, url: 'http://b'}]}]",
            "appears twice",
        ),
        ("models: [", "not valid YAML"),
        ("", "models"),
    ],
)
def test_bad_config_fails_naming_the_field(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_models_config(text, "test.yaml")
    assert expected in str(caught.value)
    assert str(caught.value).startswith("test.yaml")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_models_config(tmp_path / "absent.yaml")
