"""The image pins of the GPU deployment: deploy/versions.yaml, the one place that names them.

The compose renderer reads them; nothing else in the repository spells an image tag.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from gateway.config.errors import ConfigError

VERSIONS_FILE = Path(__file__).resolve().parents[1] / "deploy" / "versions.yaml"


class ImageVersions(BaseModel):
    """One pinned image reference per component (`repository:tag`, optionally `@sha256:...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vllm: str
    python: str
    redis: str
    prometheus: str
    grafana: str
    dcgm_exporter: str

    @field_validator("*")
    @classmethod
    def _pinned(cls, image: str) -> str:
        # A bare name or `latest` would make two hosts run different software from one file.
        name, _, digest = image.partition("@")
        tag = name.rpartition("/")[2].partition(":")[2]
        if not tag and not digest:
            raise ValueError(f"{image!r} has no tag: pin one, e.g. {image}:X.Y.Z")
        if tag == "latest":
            raise ValueError(f"{image!r}: pin an exact version, not `latest`")
        return image


def load_versions(path: Path = VERSIONS_FILE) -> ImageVersions:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        return ImageVersions.model_validate(doc)
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {details}") from exc
