"""A gateway in front of the fake vLLM server (for failures a real engine can't make on demand)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import free_port, start_fake, start_gateway

NO_HEALTH = {"GATEWAY_HEALTH_INTERVAL": "0", "GATEWAY_EJECT_AFTER_FAILURES": "0"}


@dataclass
class FakeStack:
    gateway: str
    fake: str
    log: Path

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(self.fake + "/fake/stats").json()
        return stats


def _models(fake_url: str, blackhole_port: int) -> str:
    return f"""
models:
  - name: blackhole
    model: nothing
    workers:
      - {{name: hole-0, url: "http://127.0.0.1:{blackhole_port}"}}
  - name: fake-a
    model: fake
    workers:
      - {{name: fake-0, url: "{fake_url}"}}
  - name: dead
    model: nothing
    workers:
      - {{name: dead-0, url: "http://127.0.0.1:{free_port()}"}}
"""


def blackhole() -> tuple[list[socket.socket], int]:
    """A port whose connections never complete: a listener with a full accept queue, so the
    kernel drops further SYNs (a worker that hangs before accepting)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    return [listener, *fillers], port


@pytest.fixture(scope="session")
def fake_stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, FakeStack]]:
    """Two gateways on one fake worker: `strict` has short timeouts, `patient` long ones.

    Worker health is off in both (no probes, no ejection): their tests drive dead and hanging
    workers on purpose and want each request's own error, not `no_healthy_backend`."""
    tmp = tmp_path_factory.mktemp("fake-stack")
    with contextlib.ExitStack() as started:  # whatever started is stopped, even if a start fails
        fake, fake_url = start_fake(tmp, "fake-a")
        started.callback(fake.stop)
        hole, hole_port = blackhole()
        for sock in hole:
            started.callback(sock.close)
        strict, strict_url = start_gateway(
            tmp,
            _models(fake_url, hole_port),
            {
                "GATEWAY_FIRST_BYTE_TIMEOUT": "1",
                "GATEWAY_IDLE_TIMEOUT": "1",
                "GATEWAY_TOTAL_TIMEOUT": "3",
                "GATEWAY_CONNECT_TIMEOUT": "0.5",
                "GATEWAY_MAX_BODY_BYTES": "100000",
                **NO_HEALTH,
            },
        )
        started.callback(strict.stop)
        patient, patient_url = start_gateway(tmp, _models(fake_url, hole_port), NO_HEALTH)
        started.callback(patient.stop)
        yield {
            "strict": FakeStack(strict_url, fake_url, strict.log),
            "patient": FakeStack(patient_url, fake_url, patient.log),
        }


@pytest.fixture
def strict(fake_stacks: dict[str, FakeStack]) -> FakeStack:
    return fake_stacks["strict"]


@pytest.fixture
def patient(fake_stacks: dict[str, FakeStack]) -> FakeStack:
    return fake_stacks["patient"]
