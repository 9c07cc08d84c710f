"""Render the checked-in deployment files: compose.gpu.yml, Prometheus' config and the Kubernetes
base (deploy/k8s/) from configs/models.yaml and deploy/versions.yaml; the alert rules and the
Grafana dashboard from workers/alerts.py and workers/dashboard.py.

Deterministic text (fixed key order, no timestamps), so a test can compare the checked-in files with
a fresh render and fail on drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.config.errors import ConfigError
from gateway.config.models import ModelsConfig, load_models_config
from gateway.config.placement import placement_errors
from workers.alerts import alerts_document
from workers.compose import CONFIG_DIR_IN_CONTAINER, compose_document, compose_errors
from workers.cpu_plan import REPO_ROOT
from workers.dashboard import dashboard_document
from workers.flags import flag_errors
from workers.k8s import k8s_errors
from workers.k8s_base import Manifest, base_manifests, keda_manifests, kustomization
from workers.prometheus import prometheus_document
from workers.versions import VERSIONS_FILE, ImageVersions, load_versions

COMPOSE_FILE = Path("compose.gpu.yml")
PROMETHEUS_FILE = Path("deploy/prometheus/prometheus.yml")
ALERTS_FILE = Path("deploy/prometheus/alerts.yml")
DASHBOARD_FILE = Path("deploy/grafana/dashboards/gateway.json")
K8S_DIR = Path("deploy/k8s")
RERENDER = "python -m workers render (or: make compose)"
# What a render writes: compose.gpu.yml and its monitoring files, the Kubernetes base, or both.
Target = Literal["compose", "k8s", "all"]
# Every generated file carries this in its header; only such files are removed as left over.
GENERATED = "GENERATED from"


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
        problems = placement_errors(config) + compose_errors(config) + k8s_errors(config)
        problems += flag_errors(config)
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


class _Dumper(yaml.SafeDumper):
    """Objects written out in full wherever they repeat (no `&id001` anchors), and text of several
    lines (a ConfigMap's file) as a literal block, as one would write it by hand."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _text)


def to_yaml(document: dict[str, Any], header: str) -> str:
    body = yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=False
    )
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return comment + body


def _header(deployment: Deployment, what: str) -> str:
    return (
        f"{what}\n"
        f"{GENERATED} {deployment.source()} and deploy/versions.yaml: do not edit by hand.\n"
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


def _k8s_file(deployment: Deployment, manifest: Manifest) -> tuple[Path, str]:
    return K8S_DIR / manifest.path, to_yaml(manifest.document, _header(deployment, manifest.about))


def render_k8s(deployment: Deployment) -> dict[Path, str]:
    """The kustomize base under deploy/k8s/ and its optional KEDA component, deploy/k8s/keda/."""
    base = base_manifests(deployment.config, deployment.versions, render_dashboard())
    apply = (
        'The Kubernetes base: kubectl apply -k deploy/k8s (README "Kubernetes"); KEDA: an overlay\n'
        "with `components: [<path>/deploy/k8s/keda]`."
    )
    listing = Manifest("kustomization.yaml", kustomization(base), apply)
    return dict(
        _k8s_file(deployment, manifest)
        for manifest in [*base, listing, *keda_manifests(deployment.config)]
    )


def render_all(deployment: Deployment, target: Target = "all") -> dict[Path, str]:
    """Each generated file's path (relative to the repository root) and its content."""
    files: dict[Path, str] = {}
    if target in ("compose", "all"):
        files[COMPOSE_FILE] = render_compose(deployment)
        files[PROMETHEUS_FILE] = render_prometheus(deployment)
        files[ALERTS_FILE] = render_alerts()
        files[DASHBOARD_FILE] = render_dashboard()
    if target in ("k8s", "all"):
        files |= render_k8s(deployment)
    return files


def leftover_files(deployment: Deployment, rendered: dict[Path, str]) -> list[Path]:
    """Generated files under deploy/k8s/ that a render no longer makes (a model was removed)."""
    directory = deployment.root / K8S_DIR
    if not directory.is_dir():
        return []
    leftover = []
    for path in sorted(directory.rglob("*.yaml")):
        relative = path.relative_to(deployment.root)
        if relative not in rendered and GENERATED in path.read_text(encoding="utf-8")[:1000]:
            leftover.append(relative)
    return leftover


def stale_files(deployment: Deployment, target: Target = "all") -> list[Path]:
    """The generated files whose checked-in text differs from a fresh render, and left-overs."""
    rendered = render_all(deployment, target)
    stale = []
    for relative, text in rendered.items():
        path = deployment.root / relative
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(relative)
    if target != "compose":
        stale += leftover_files(deployment, rendered)
    return stale
