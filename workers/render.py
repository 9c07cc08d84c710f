"""Render the checked-in deployment files: compose.gpu.yml and Prometheus' config from
configs/models.yaml and deploy/versions.yaml; the alert rules and the Grafana dashboard from
workers/alerts.py and workers/dashboard.py.

Deterministic text (fixed key order, no timestamps), so a test can compare the checked-in files with
a fresh render and fail on drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.config.errors import ConfigError
from gateway.config.models import ModelsConfig, load_models_config
from gateway.config.placement import placement_errors
from workers.alerts import alerts_document
from workers.compose import CONFIG_DIR_IN_CONTAINER, compose_document, compose_errors
from workers.cpu_plan import REPO_ROOT
from workers.dashboard import dashboard_document
from workers.prometheus import prometheus_document
from workers.versions import VERSIONS_FILE, ImageVersions, load_versions

COMPOSE_FILE = Path("compose.gpu.yml")
PROMETHEUS_FILE = Path("deploy/prometheus/prometheus.yml")
ALERTS_FILE = Path("deploy/prometheus/alerts.yml")
DASHBOARD_FILE = Path("deploy/grafana/dashboards/gateway.json")
RERENDER = "python -m workers render (or: make compose)"


@dataclass(frozen=True)
class Deployment:
    """The inputs of a render: the models file (and where it sits) and the image pins."""

    config: ModelsConfig
    config_path: Path
    versions: ImageVersions
    root: Path

    @classmethod
    def load(
        cls, config_path: Path, root: Path = REPO_ROOT, versions_path: Path = VERSIONS_FILE
    ) -> Deployment:
        config = load_models_config(config_path)
        problems = placement_errors(config) + compose_errors(config)
        if problems:
            raise ConfigError(f"{config_path}: cannot deploy\n  " + "\n  ".join(problems))
        return cls(config, config_path, load_versions(versions_path), root)

    def config_in_container(self) -> str:
        # ./configs is mounted into the gateway; the models file must be inside it.
        configs = (self.root / "configs").resolve()
        try:
            relative = self.config_path.resolve().relative_to(configs)
        except ValueError:
            raise ConfigError(
                f"{self.config_path}: must be under {configs}, the directory compose mounts "
                "into the gateway"
            ) from None
        return f"{CONFIG_DIR_IN_CONTAINER}/{relative.as_posix()}"

    def source(self) -> str:
        try:
            return self.config_path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(self.config_path)


def to_yaml(document: dict[str, Any], header: str) -> str:
    body = yaml.safe_dump(document, sort_keys=False, width=1000, default_flow_style=False)
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + body


def _header(deployment: Deployment, what: str) -> str:
    return (
        f"{what}\n"
        f"GENERATED from {deployment.source()} and deploy/versions.yaml: do not edit by hand.\n"
        f"After changing either, re-render: {RERENDER}"
    )


def render_compose(deployment: Deployment) -> str:
    document = compose_document(
        deployment.config, deployment.versions, deployment.config_in_container()
    )
    header = _header(
        deployment,
        "The whole stack on one GPU host: docker compose -f compose.gpu.yml up -d",
    )
    return to_yaml(document, header)


def render_prometheus(deployment: Deployment) -> str:
    header = _header(deployment, "Prometheus: the gateway, every vLLM worker, the DCGM exporter.")
    return to_yaml(prometheus_document(deployment.config), header)


def render_alerts() -> str:
    header = (
        "Prometheus alert rules, loaded by prometheus.yml; unit-tested in alerts.test.yml.\n"
        "GENERATED from workers/alerts.py: do not edit by hand.\n"
        f"After changing it, re-render: {RERENDER}"
    )
    return to_yaml(alerts_document(), header)


def render_dashboard() -> str:
    # JSON has no comments: the dashboard's description says it is generated.
    return json.dumps(dashboard_document(), indent=2) + "\n"


def render_all(deployment: Deployment) -> dict[Path, str]:
    """Each generated file's path (relative to the repository root) and its content."""
    return {
        COMPOSE_FILE: render_compose(deployment),
        PROMETHEUS_FILE: render_prometheus(deployment),
        ALERTS_FILE: render_alerts(),
        DASHBOARD_FILE: render_dashboard(),
    }


def stale_files(deployment: Deployment) -> list[Path]:
    """The generated files whose checked-in text differs from a fresh render."""
    stale = []
    for relative, text in render_all(deployment).items():
        path = deployment.root / relative
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(relative)
    return stale
