"""Shared by the real-engine benchmarks (length_mix, prefix_mix): a gateway in front of local
vLLM workers, and one streamed chat request timed by the client (TTFT, end to end, usage, text).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.procs import Service, free_port
from bench.targets import BASE_ENV
from workers.local import LocalWorkers


def write_attached_config(engines: LocalWorkers, path: Path) -> Path:
    """The models.yaml a gateway routes with: the running workers, attached by their URLs."""
    attached = engines.attached_config()
    path.write_text(yaml.safe_dump(attached.model_dump(mode="json", exclude_none=True)))
    return path


def start_gateway(
    config_path: Path, env: Mapping[str, str], log_dir: Path, label: str = "gateway"
) -> tuple[Service, str]:
    """A gateway (auth off) with `env` on top; returns once its /ready answers 200.

    Inherited GATEWAY_* variables are dropped: only `env` decides what is on.
    """
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full.update(BASE_ENV)
    full.update(env)
    args = [sys.executable, "-m", "gateway", "--config", str(config_path), "--port", str(port)]
    service = Service(label, args, log_dir / f"{label}-{port}.log", full)
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_http(url + "/ready", 30)
    except RuntimeError:
        service.stop()
        raise
    return service, url


@dataclass
class StreamResult:
    """One streamed chat completion as the client saw it; times in seconds from the write."""

    status: int
    latency: float = 0.0
    ttft: float | None = None  # first event carrying a choice's content (vLLM: the first token)
    chunks: int = 0  # events carrying content
    content: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def text(self) -> str:
        return "".join(self.content)


def _take_event(result: StreamResult, payload: str, started: float) -> None:
    event = json.loads(payload)
    if "error" in event:
        result.error = str(event["error"])[:200]
        return
    if event.get("usage"):
        result.usage = event["usage"]
    for choice in event.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content is None:
            continue
        if result.ttft is None:
            result.ttft = time.perf_counter() - started
        result.chunks += 1
        result.content.append(content)


async def stream_chat(
    client: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
) -> StreamResult:
    """POST `body` (with "stream": true) to `url`/v1/chat/completions and read it to the end."""
    started = time.perf_counter()
    path = url + "/v1/chat/completions"
    async with client.stream("POST", path, json=dict(body), headers=headers) as response:
        result = StreamResult(response.status_code)
        if response.status_code != 200:
            result.error = (await response.aread()).decode(errors="replace")[:200]
        else:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    _take_event(result, line.removeprefix("data: "), started)
    result.latency = time.perf_counter() - started
    return result
