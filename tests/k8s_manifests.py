"""The rendered Kubernetes base for tests: rendered once per config, parsed into objects, and
validated offline, built-in kinds against the JSON schemas of one Kubernetes release
(kubernetes-validate, strict: unknown fields fail), custom resources against the schemas their
CRDs publish (vendored in tests/data/k8s-crds/, made as strict).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from gateway.config.models import ModelConfig, parse_models_config
from workers.render import K8S_DIR, Deployment, render_k8s

# A recent release that managed clusters offer; the manifests use nothing newer.
KUBERNETES_VERSION = "1.35.0"
CRD_DIR = Path(__file__).resolve().parent / "data" / "k8s-crds"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "models.yaml"
EXAMPLE_8_GPU = ROOT / "configs" / "examples" / "8-gpu.yaml"
Docs = dict[tuple[str, str], dict[str, Any]]


@functools.cache
def _render(config: Path, root: Path) -> dict[Path, str]:
    return render_k8s(Deployment.load(config, root))


def render_files(config: Path = DEFAULT_CONFIG, root: Path = ROOT) -> dict[Path, str]:
    """The rendered files (text: each caller parses its own objects); one render per config."""
    return _render(config, root)


def objects(rendered: dict[Path, str], keda: bool = False) -> Docs:
    """(kind, name) -> object, of the base (or of the KEDA component)."""
    folder = K8S_DIR / "keda" if keda else K8S_DIR
    docs = [yaml.safe_load(text) for path, text in rendered.items() if path.parent == folder]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs if "metadata" in d}


def objects_in(tmp_path: Path, models: str) -> Docs:
    """The base rendered from `models` (a models.yaml text) in a directory of its own."""
    (tmp_path / "configs").mkdir(parents=True)
    (tmp_path / "configs" / "models.yaml").write_text(models)
    return objects(render_files(tmp_path / "configs" / "models.yaml", tmp_path))


def gateway_models(docs: Docs) -> dict[str, ModelConfig]:
    """The models of the gateway's ConfigMap, parsed by the gateway's own loader."""
    text = docs[("ConfigMap", "gateway-models")]["data"]["models.yaml"]
    return {m.name: m for m in parse_models_config(text).models}


def container_of(workload: dict[str, Any]) -> dict[str, Any]:
    only: dict[str, Any]
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def _strict(schema: Any) -> Any:
    """A CRD schema that rejects unknown fields, as `kubectl apply` (server-side field validation,
    Strict by default) does: objects with declared properties allow no others."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    open_ended = "additionalProperties" in schema or schema.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if "properties" in schema and not open_ended:
        strict["additionalProperties"] = False
    return strict


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema, for every vendored CRD version."""
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = crd["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schemas[(api_version, spec["names"]["kind"])] = schema
    return schemas


def problems(document: dict[str, Any]) -> list[str]:
    """Every schema violation of one object, as `kind/name: path: message`; empty when valid."""
    where = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
    crd = crd_schemas().get((document.get("apiVersion", ""), document.get("kind", "")))
    if crd is not None:
        # OpenAPI v3.0 schemas follow JSON Schema draft 4 (e.g. a boolean exclusiveMinimum).
        validator = jsonschema.Draft4Validator(crd)
        return [
            f"{where}: {'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(document)
        ]
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{where}: {'.'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{where}: no schema: {error.message}"]
    return []
