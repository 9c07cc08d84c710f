"""`make run` says when the gateway is ready: `python -m workers run` starts the gateway, waits
for its /ready and prints the line; a gateway that dies is not reported ready."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from tests.procs import free_port, one_worker_models, start_fake
from workers.__main__ import _report_gateway, _start_gateway, _stop


def _args(config: Path) -> argparse.Namespace:
    return argparse.Namespace(config=config, gateway_host="127.0.0.1", gateway_port=free_port())


def test_gateway_ready_line_comes_once_ready_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, fake_url = start_fake(tmp_path, "fake-a")
    try:
        config = tmp_path / "models.yaml"
        config.write_text(one_worker_models(fake_url))
        args = _args(config)
        process = _start_gateway(args, config)
        try:
            _report_gateway(args, process, 1)
            url = f"http://127.0.0.1:{args.gateway_port}"
            out = capsys.readouterr().out.splitlines()
            assert out[0] == f"gateway: starting on {url}"
            assert out[1].startswith("gateway: ready after ")
            assert out[1].endswith(f" s, {url}/v1 in front of 1 worker(s); Ctrl-C stops everything")
        finally:
            _stop(process)
    finally:
        fake.stop()


def test_a_gateway_that_exits_is_not_reported_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models: []\n")  # refused: the gateway exits at start
    args = _args(config)
    started = time.monotonic()
    process = _start_gateway(args, config)
    try:
        _report_gateway(args, process, 1)
    finally:
        _stop(process)
    assert time.monotonic() - started < 30  # noticed the exit, did not wait for the timeout
    assert "ready" not in capsys.readouterr().out
