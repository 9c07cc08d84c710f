"""Debian's `prometheus` package in tests: promtool, and a real Prometheus server on a free port
with its own storage, queried through its HTTP API. `make tools` installs the package; a test
that needs it fails (never skips) when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import Proc, free_port, wait_http

INSTALL_HINT = "install Debian's prometheus package (`make tools` does)"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}")
    return path


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [binary("promtool"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


class PrometheusServer:
    """`prometheus` serving `config` from a private storage directory in `tmp`."""

    def __init__(self, config: Path, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc = Proc(args, tmp / "prometheus.log")
        try:
            wait_http(self.url + "/-/ready", self.proc.popen, seconds=60)
        except RuntimeError:
            self.proc.stop()
            raise

    def stop(self) -> None:
        self.proc.stop()

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (each item: `metric` labels and `value`)."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def wait_until(self, what: str, check: Any, seconds: float = 60.0) -> None:
        """Poll `check()` (truthy when done) until it holds, or fail naming `what`."""
        deadline = time.monotonic() + seconds
        while not check():
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus: {what} not seen within {seconds:.0f} s")
            time.sleep(0.5)
