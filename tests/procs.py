"""Start and stop the real processes tests talk to: the gateway and the fake vLLM server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {seconds}s")


class Proc:
    """A child process with its output in a log file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, args: list[str], log: Path, env: Mapping[str, str] | None = None) -> None:
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_serving(
    args: list[str],
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
) -> tuple[Proc, str]:
    """Start a server on `host`:`port` and wait for its /health; a server that never comes up
    is stopped before the error is raised, so no test leaves it behind."""
    proc = Proc(args, log, env)
    url = f"http://{host}:{port}"
    try:
        wait_http(url + "/health", proc.popen)
    except RuntimeError:
        proc.stop()
        raise
    return proc, url


def start_fake(
    tmp: Path, model: str, port: int | None = None, host: str = "127.0.0.1"
) -> tuple[Proc, str]:
    """A fake vLLM server; `host` may be any loopback address (127.0.0.0/8), so several share
    one port as the pods behind a DNS name do."""
    port = port or free_port()
    args = [sys.executable, "-m", "tests.fakes.fake_vllm", "--port", str(port), "--model", model]
    args += ["--host", host]
    return start_serving(args, port, tmp / f"fake-{host}-{port}.log", host=host)


def one_worker_models(worker_url: str, model: str = "fake-a") -> str:
    """A models.yaml serving `model` from the one (fake) worker at `worker_url`."""
    return (
        f"models:\n  - {{name: {model}, model: f, workers: [{{name: w0, url: '{worker_url}'}}]}}\n"
    )


def start_gateway(
    tmp: Path, models_yaml: str, env: Mapping[str, str] | None = None
) -> tuple[Proc, str]:
    port = free_port()
    config = tmp / f"models-{port}.yaml"
    config.write_text(models_yaml)
    # Tests that want keys say so; a short drain keeps stopping a gateway quick.
    env = {"GATEWAY_AUTH_ENABLED": "false", "GATEWAY_DRAIN_TIMEOUT": "1", **(env or {})}
    args = [sys.executable, "-m", "gateway", "--config", str(config), "--port", str(port)]
    return start_serving(args, port, tmp / f"gateway-{port}.log", env)
