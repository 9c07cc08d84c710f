"""A gateway in front of the fake vLLM server (for failures a real engine can't make on demand)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.procs import free_port, start_fake, start_gateway


@dataclass
class FakeStack:
    gateway: str
    fake: str
    log: Path

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(self.fake + "/fake/stats").json()
        return stats


def _models(fake_url: str) -> str:
    return f"""
models:
  - name: fake-a
    model: fake
    workers:
      - {{name: fake-0, url: "{fake_url}"}}
  - name: dead
    model: nothing
    workers:
      - {{name: dead-0, url: "http://127.0.0.1:{free_port()}"}}
"""


@pytest.fixture(scope="session")
def fake_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FakeStack]]:
    """Two gateways on one fake worker: `strict` has short timeouts, `patient` long ones."""
    tmp = tmp_path_factory.mktemp("fake-stack")
    fake, fake_url = start_fake(tmp, "fake-a")
    strict, strict_url = start_gateway(
        tmp,
        _models(fake_url),
        {
            "GATEWAY_FIRST_BYTE_TIMEOUT": "1",
            "GATEWAY_IDLE_TIMEOUT": "1",
            "GATEWAY_TOTAL_TIMEOUT": "3",
            "GATEWAY_MAX_BODY_BYTES": "100000",
        },
    )
    patient, patient_url = start_gateway(tmp, _models(fake_url))
    try:
        yield {
            "strict": FakeStack(strict_url, fake_url, strict.log),
            "patient": FakeStack(patient_url, fake_url, patient.log),
        }
    finally:
        for proc in (strict, patient, fake):
            proc.stop()


@pytest.fixture
def strict(fake_stacks: dict[str, FakeStack]) -> FakeStack:
    return fake_stacks["strict"]


@pytest.fixture
def patient(fake_stacks: dict[str, FakeStack]) -> FakeStack:
    return fake_stacks["patient"]
