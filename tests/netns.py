"""Real hosts for fault tests: each process in a network namespace of its own, with its own
address, and faults made in the network between them (tests/integration/test_netns_faults.py).

The topology is a star: a router namespace, and one namespace per host joined to it by a veth
pair (10.77.<i>.2 in the host, 10.77.<i>.1 on the router, a default route through it). Every
packet between two hosts crosses the router, so a fault between two of them is made there,
with policy routing: `ip rule add from A to B blackhole` (and back) silently drops their
packets, and only theirs — no refusal, no ICMP, exactly what a dead link or a partition looks
like to both ends. (A bridge would switch the hosts' frames past the router's rules; and this
kernel has neither iptables/nftables nor tc's netem or classifiers, so policy routing is the
one selective drop it offers. Added latency is a userspace proxy: tests/delay_proxy.py.)

Nothing is created in the root namespace: interfaces live inside the namespaces, so their names
cannot collide, and the namespaces' names carry this process's id and a random tag, so two runs
cannot collide either. Everything is removed on close, on failure and at exit; a run that died
before its cleanup is swept by the next one (namespaces named after a process that is gone).

The test process itself stays in the root namespace; it reaches the hosts through threads that
enter a namespace (setns(2) moves only the calling thread): `Net.executor(host)`.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.observe.metrics import process_alive
from tests.procs import Proc

CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^gwt(\d+)x[0-9a-f]{4}-")
_libc = ctypes.CDLL(None, use_errno=True)


def skip_unless_possible() -> None:
    """Skip (with the reason) where namespaces cannot be made: not root, no `ip`."""
    if os.geteuid() != 0:
        pytest.skip("network namespace tests need root (ip netns, setns)")
    if shutil.which("ip") is None:
        pytest.skip("network namespace tests need iproute2's `ip`")


def ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def enter(namespace: str) -> None:
    """Move the calling thread into `namespace` (sockets it opens then live there)."""
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {namespace}: {os.strerror(error)}")
    finally:
        os.close(fd)


def _namespaces() -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def sweep_leftovers() -> None:
    """Namespaces a run that died before its cleanup left behind (its process is gone)."""
    for name in _namespaces():
        match = _NAME.match(name)
        if match and not process_alive(int(match.group(1))):
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", name)


@dataclass
class Host:
    role: str
    namespace: str
    address: str  # its one address, 10.77.<index>.2
    index: int


@dataclass
class Net:
    """The router and its hosts; `with Net() as net:` removes everything on the way out."""

    tag: str = field(default_factory=lambda: f"gwt{os.getpid()}x{secrets.token_hex(2)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    _procs: list[Proc] = field(default_factory=list)
    _pools: list[concurrent.futures.ThreadPoolExecutor] = field(default_factory=list)
    _cuts: dict[tuple[str, str], int] = field(default_factory=dict)
    _created: list[str] = field(default_factory=list)
    _closed: bool = False

    @property
    def router(self) -> str:
        return f"{self.tag}-rt"

    def __enter__(self) -> Net:
        skip_unless_possible()
        sweep_leftovers()
        atexit.register(self.close)
        try:
            self._add_namespace(self.router)
        except RuntimeError as exc:  # e.g. a container without CAP_SYS_ADMIN
            self.close()
            pytest.skip(f"cannot create network namespaces here: {exc}")
        ip("-n", self.router, "link", "set", "lo", "up")
        self._sysctl(self.router, "net.ipv4.ip_forward", "1")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        ip("netns", "add", name)
        self._created.append(name)

    @staticmethod
    def _sysctl(namespace: str, key: str, value: str) -> None:
        subprocess.run(
            ["ip", "netns", "exec", namespace, "sysctl", "-qw", f"{key}={value}"], check=True
        )

    def add(self, role: str) -> Host:
        """A new host joined to the router; its address is 10.77.<n>.2."""
        index = len(self.hosts) + 1
        namespace = f"{self.tag}-{role}"
        self._add_namespace(namespace)
        veth = f"v{index}"
        ip(
            "-n",
            self.router,
            "link",
            "add",
            veth,
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            namespace,
        )
        ip("-n", self.router, "addr", "add", f"10.77.{index}.1/24", "dev", veth)
        ip("-n", self.router, "link", "set", veth, "up")
        ip("-n", namespace, "addr", "add", f"10.77.{index}.2/24", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", namespace, "link", "set", "lo", "up")
        ip("-n", namespace, "route", "add", "default", "via", f"10.77.{index}.1")
        host = Host(role, namespace, f"10.77.{index}.2", index)
        self.hosts[role] = host
        return host

    # --- processes and threads inside a host ------------------------------------------------

    def start(
        self, host: Host, args: list[str], log: Path, env: Mapping[str, str] | None = None
    ) -> Proc:
        """`args` run inside `host` (stopped on close, before its namespace goes)."""
        proc = Proc(["ip", "netns", "exec", host.namespace, *args], log, env)
        self._procs.append(proc)
        return proc

    def executor(self, host: Host, threads: int = 4) -> concurrent.futures.ThreadPoolExecutor:
        """Threads that live in `host`: what they connect to, they connect to from there."""
        pool = concurrent.futures.ThreadPoolExecutor(
            threads, f"{host.role}-thread", initializer=enter, initargs=(host.namespace,)
        )
        self._pools.append(pool)
        return pool

    # --- faults ------------------------------------------------------------------------------

    def cut(self, a: Host, b: Host) -> None:
        """Every packet between `a` and `b` is dropped, both ways (the others still flow)."""
        pair = (a.role, b.role)
        if pair in self._cuts:
            return
        priority = 100 + 2 * (a.index * 64 + b.index)
        for source, target, prio in ((a, b, priority), (b, a, priority + 1)):
            ip(
                "-n", self.router, "rule", "add", "from", source.address, "to", target.address,
                "blackhole", "priority", str(prio),
            )  # fmt: skip
        self._cuts[pair] = priority

    def mend(self, a: Host, b: Host) -> None:
        priority = self._cuts.pop((a.role, b.role), None)
        if priority is None:
            return
        for prio in (priority, priority + 1):
            ip("-n", self.router, "rule", "del", "priority", str(prio))

    def mend_all(self) -> None:
        for a, b in list(self._cuts):
            self.mend(self.hosts[a], self.hosts[b])

    # --- cleanup ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop()
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)
        for name in reversed(self._created):
            with contextlib.suppress(RuntimeError):
                ip("netns", "del", name)
        left = set(self._created) & set(_namespaces())
        self._created.clear()
        atexit.unregister(self.close)
        if left:
            raise RuntimeError(f"network namespaces left behind: {sorted(left)}")
