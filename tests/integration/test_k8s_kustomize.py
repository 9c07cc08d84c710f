"""deploy/k8s built by the real kustomize (`kubectl kustomize`, no cluster needed): the checked-in
base, the base with the KEDA component, and a fresh render of the 8-GPU example.

Skipped, saying why, only where kubectl is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.k8s_manifests import problems
from workers.k8s import NAMESPACE
from workers.render import K8S_DIR, Deployment, render_k8s

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_8_GPU = ROOT / "configs" / "examples" / "8-gpu.yaml"
CLUSTER_SCOPED = {"Namespace"}


def _build(directory: Path) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (https://kubernetes.io/docs/tasks/tools/)")
    return subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    result = _build(directory)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _overlay(tmp_path: Path, base: Path) -> Path:
    """An overlay as an operator writes it: the base plus the KEDA component."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    relative = Path(os.path.relpath(base, overlay))
    kustomization = {"resources": [str(relative)], "components": [str(relative / "keda")]}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return overlay


def _names(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(doc["kind"], doc["metadata"]["name"]) for doc in docs}


def test_kustomize_builds_the_checked_in_base_into_one_namespace() -> None:
    docs = _kustomize(ROOT / K8S_DIR)
    listed = yaml.safe_load((ROOT / K8S_DIR / "kustomization.yaml").read_text())["resources"]
    assert len(docs) == len(listed)
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    assert ("Namespace", NAMESPACE) in _names(docs)
    assert not [doc for doc in docs if doc["kind"] == "ScaledObject"]  # KEDA is opt-in


def test_kustomize_builds_the_base_with_the_keda_component(tmp_path: Path) -> None:
    docs = _kustomize(_overlay(tmp_path, ROOT / K8S_DIR))
    scaled = {
        doc["spec"]["scaleTargetRef"]["name"] for doc in docs if doc["kind"] == "ScaledObject"
    }
    statefulsets = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "StatefulSet"}
    assert scaled == set(statefulsets) - {"redis"}
    for name in scaled:  # KEDA owns their replica counts
        assert "replicas" not in statefulsets[name]["spec"]
    assert statefulsets["redis"]["spec"]["replicas"] == 1
    (models,) = [doc for doc in docs if doc["metadata"]["name"] == "gateway-models"]
    # The gateway follows each model's Service, whatever count KEDA sets.
    assert "dns: vllm-qwen2-5-1-5b-instruct:8000" in models["data"]["models.yaml"]
    assert [p for doc in docs for p in problems(doc)] == []


def test_kustomize_builds_a_fresh_render_of_the_8_gpu_example(tmp_path: Path) -> None:
    for relative, text in render_k8s(Deployment.load(EXAMPLE_8_GPU, ROOT)).items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    base = tmp_path / K8S_DIR
    assert ("StatefulSet", "vllm-llama-3-1-8b-instruct") in _names(_kustomize(base))
    assert _kustomize(_overlay(tmp_path, base))


def test_kustomize_rejects_a_kustomization_naming_a_missing_file(tmp_path: Path) -> None:
    # Guards the tests above: the build really reads every listed file.
    shutil.copytree(ROOT / K8S_DIR, tmp_path / "k8s")
    (tmp_path / "k8s" / "gateway-hpa.yaml").unlink()
    result = _build(tmp_path / "k8s")
    assert result.returncode != 0
    assert "gateway-hpa.yaml" in result.stderr
