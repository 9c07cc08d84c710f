"""Two gateway replicas sharing one Redis, in front of fake vLLM workers of each kind: a chat
model on two workers (LoRA adapters loaded at run time), a pooling model, and a chat model
whose one adapter must be loaded by its worker (no run-time loading). Keys with limits."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.config.keys import hash_key, new_key
from tests.procs import start_fake, start_gateway

# key name -> its limits (and allowlist)
KEYS: dict[str, dict[str, Any]] = {
    "open": {},
    "embed-tpm": {"tpm": 100},
    "messages-tpm": {"tpm": 150},
    "solo": {"max_concurrent": 1},
    "rpm-2": {"rpm": 2, "tpm": 1},
    "lora-only": {"models": ["chat-lora"]},
}


@dataclass
class Stack:
    gateways: list[str]
    fakes: dict[str, str]  # worker name -> its URL
    keys: dict[str, str]  # key name -> the secret key
    logs: list[Path]

    @property
    def url(self) -> str:
        return self.gateways[0]

    def auth(self, name: str = "open") -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}"}

    def stats(self, worker: str) -> dict[str, Any]:
        stats: dict[str, Any] = httpx.get(self.fakes[worker] + "/fake/stats").json()
        return stats

    def control(self, worker: str, **settings: Any) -> None:
        httpx.post(self.fakes[worker] + "/fake/control", json=settings).raise_for_status()


def _models(fakes: dict[str, str]) -> str:
    doc = {
        "models": [
            {
                "name": "chat",
                "model": "f",
                "adapters": [
                    {"name": "chat-lora", "path": "/adapters/chat-lora"},
                    {"name": "chat-lora-2", "path": "/adapters/chat-lora-2"},
                ],
                "runtime_lora": True,
                "workers": [{"name": n, "url": fakes[n]} for n in ("c0", "c1")],
            },
            {
                "name": "embed",
                "model": "e",
                "runner": "pooling",
                "workers": [{"name": "e0", "url": fakes["e0"]}],
            },
            {
                "name": "fixed",
                "model": "f",
                "adapters": [{"name": "fixed-lora", "path": "/adapters/fixed"}],
                "workers": [{"name": "f0", "url": fakes["f0"]}],
            },
        ]
    }
    return yaml.safe_dump(doc)


@contextlib.contextmanager
def endpoint_stack(tmp: Path, redis_url: str, env: dict[str, str] | None = None) -> Iterator[Stack]:
    keys = {name: new_key() for name in KEYS}
    entries = [{"name": n, "sha256": hash_key(keys[n]), **limits} for n, limits in KEYS.items()]
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": entries}))
    with contextlib.ExitStack() as started:
        fakes: dict[str, str] = {}
        for name, model in (("c0", "f"), ("c1", "f"), ("e0", "e"), ("f0", "f")):
            proc, fakes[name] = start_fake(tmp, model)
            started.callback(proc.stop)
        httpx.post(fakes["f0"] + "/fake/control", json={"adapters": ["fixed-lora"]})
        settings = {
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_KEYS_FILE": str(keys_file),
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_REDIS_TIMEOUT": "2",
            "GATEWAY_HEALTH_INTERVAL": "0.2",
            "GATEWAY_HEALTH_TIMEOUT": "3",  # a busy test machine must not look like a dead worker
            "GATEWAY_EJECT_AFTER_FAILURES": "0",
            "GATEWAY_ACCESS_LOG": "true",
            **(env or {}),
        }
        gateways, logs = [], []
        for _ in range(2):
            proc, url = start_gateway(tmp, _models(fakes), settings)
            started.callback(proc.stop)
            gateways.append(url)
            logs.append(proc.log)
        time.sleep(0.5)  # a few health rounds: every worker up, adapters known
        yield Stack(gateways, fakes, keys, logs)
