"""Processes under test: start them pinned (taskset), wait for /health, read /proc, stop them.

CPU time comes from /proc/PID/stat (utime + stime, all threads) summed over the process tree.
"""

from __future__ import annotations

import http.client
import os
import resource
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_TICK = os.sysconf("SC_CLK_TCK")
# The gateway holds two sockets per open stream (client and worker); 5,000 streams need ~10,000.
OPEN_FILES = 65536


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a multi-process gateway has children)."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, ()))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole tree under `pid`, all threads included."""
    ticks = 0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return ticks / _TICK


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children: the load generators, once they exited."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_busy_seconds() -> float:
    """CPU time all CPUs spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / _TICK


def rss_bytes(pid: int) -> int:
    """Resident memory (VmRSS) summed over the tree under `pid`."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def open_files_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


def pinned(cpus: str, args: Sequence[str]) -> list[str]:
    """`args` run on `cpus`, with the open-files limit raised as far as this machine allows."""
    command = shlex.join(["taskset", "-c", cpus, *args])
    raise_limit = f"ulimit -n {OPEN_FILES} 2>/dev/null || ulimit -n $(ulimit -Hn)"
    # exec: the PID we hold is the Python process itself, so /proc/PID is the one we measure.
    return ["bash", "-c", f"{raise_limit}; exec {command}"]


class Service:
    """A server process pinned to CPUs, its output in a log file; stopped by its own PID."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(
            args, cwd=cwd, stdout=self._out, stderr=subprocess.STDOUT, env=dict(env or os.environ)
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_http(self, url: str, seconds: float = 30.0) -> None:
        """Return once GET `url` answers 200; fail with the log's tail if the process died."""
        parts = url.removeprefix("http://").split("/", 1)
        host, port = parts[0].rsplit(":", 1)
        path = "/" + (parts[1] if len(parts) > 1 else "")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}):\n{self.tail()}")
            conn = http.client.HTTPConnection(host, int(port), timeout=1.0)
            try:
                conn.request("GET", path)
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: {url} not ready within {seconds:g}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        self._out.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()


def start_upstream(
    log_dir: Path, cpus: str, chunks: int, gap_ms: float, model: str = "bench-model"
) -> tuple[Service, str]:
    port = free_port()
    args = [sys.executable, "-m", "bench.upstream", "--port", str(port)]
    args += ["--chunks", str(chunks), "--gap-ms", f"{gap_ms:g}", "--model", model]
    service = Service("upstream", pinned(cpus, args), log_dir / f"upstream-{port}.log")
    url = f"http://127.0.0.1:{port}"
    service.wait_http(url + "/health")
    return service, url
