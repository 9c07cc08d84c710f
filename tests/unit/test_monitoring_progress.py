"""What `make run` prints while it starts: each worker starting (name, model, port), a reminder
while engines warm up, each worker ready with its elapsed time and URL (workers/progress.py)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from gateway.config.models import parse_models_config
from workers import local, progress
from workers.cpu_plan import plan_launches
from workers.local import LocalWorkers

MODELS = """
models:
  - name: qwen
    model: Qwen/Qwen2.5-1.5B-Instruct
    workers: [{name: qwen-0, gpus: [0], port: 8101}]
  - name: llama
    model: meta-llama/Llama-3.2-1B-Instruct
    workers: [{name: llama-0, gpus: [1], port: 8102}]
"""


def test_worker_lines_name_the_worker_its_model_port_and_elapsed_time(tmp_path: Path) -> None:
    qwen, _ = plan_launches(parse_models_config(MODELS), cache_dir=tmp_path)
    assert progress.worker_starting(qwen) == (
        f"worker qwen-0 (model qwen): starting on port 8101, log {tmp_path}/logs/qwen-0.log"
    )
    assert progress.worker_ready(qwen, 53.4) == (
        "worker qwen-0 (model qwen): ready after 53 s, http://127.0.0.1:8101/v1"
    )


def test_gateway_lines_say_where_it_listens() -> None:
    assert progress.gateway_starting("http://127.0.0.1:8000") == (
        "gateway: starting on http://127.0.0.1:8000"
    )
    assert progress.gateway_ready("http://127.0.0.1:8000", 1.6, 2) == (
        "gateway: ready after 2 s, http://127.0.0.1:8000/v1 in front of 2 worker(s); "
        "Ctrl-C stops everything"
    )


def test_waiting_reports_each_worker_as_it_becomes_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines: list[str] = []
    workers = LocalWorkers(parse_models_config(MODELS), cache_dir=tmp_path, progress=lines.append)
    probes = {"qwen-0": 0, "llama-0": 0}

    def healthy(_: LocalWorkers, client: httpx.Client, name: str) -> bool:
        probes[name] += 1
        return name == "qwen-0" or probes[name] > 1  # llama-0 on its second probe

    monkeypatch.setattr(LocalWorkers, "_healthy", healthy)
    monkeypatch.setattr(local, "WAITING_EVERY_SECONDS", 0.0)
    workers._wait_ready(["qwen-0", "llama-0"])
    # Whole seconds since the start: 0 and 1 on an idle machine, more on a loaded one.
    assert re.match(r"worker qwen-0 \(model qwen\): ready after \d+ s", lines[0])
    assert lines[1].startswith("waiting for llama-0 (")
    assert re.match(r"worker llama-0 \(model llama\): ready after \d+ s", lines[2])
    assert lines[2].endswith("http://127.0.0.1:8102/v1")
    assert len(lines) == 3


def test_progress_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    progress.print_line("worker x: starting")
    out, err = capsys.readouterr()
    assert out == "worker x: starting\n"
    assert err == ""
