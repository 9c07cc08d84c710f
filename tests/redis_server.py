"""A private redis-server for tests that stop and restart it (outages), on one fixed port."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from tests.procs import free_port


class RedisServer:
    """`redis-server` without persistence; kill() and start() again keep the same port."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self._tmp = tmp
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=1)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, seconds: float = 10.0) -> None:
        assert not self.running, "already running"
        self._starts += 1
        log = (self._tmp / f"redis-{self.port}-{self._starts}.log").open("wb")
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._tmp),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server on {self.port} exited with {self._proc.returncode}"
                )
            try:
                if self.client(0).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not answer within {seconds}s")

    def kill(self) -> None:
        """SIGKILL: the abrupt outage (connections drop, nothing is saved)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def restart(self) -> None:
        self.kill()
        self.start()
