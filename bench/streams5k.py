"""`python -m bench streams5k`: 5,000 slow streams open at once through one gateway process.

Reports the gateway's peak RSS (VmRSS over its process tree, polled) and checks that every
stream completed and was valid. Needs an open-files limit of >= 12,000 for the gateway.
"""

from __future__ import annotations

import argparse
import http.client
import math
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.loads import LoadResult, run_streamload
from bench.procs import (
    OPEN_FILES,
    ROOT,
    Service,
    children_cpu_seconds,
    cpu_seconds,
    machine_busy_seconds,
    open_files_limit,
    rss_bytes,
    start_upstream,
)
from bench.targets import BASE_ENV, GatewayConfig, new_api_key, parse_env, start_gateway

OUT = ROOT / "bench" / "out"
MIB = 2**20


class RssPoller(threading.Thread):
    """Samples the tree's RSS every `interval` seconds and keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


@dataclass(frozen=True, slots=True)
class Outcome:
    load: LoadResult
    rss_idle: int
    rss_peak: int
    rss_after: int
    gateway_cpu_s: float
    upstream_peak: int
    upstream_aborted: int
    open_files: int
    wall_s: float
    other_cpu_s: float  # everything but the gateway, the upstream and the load generator


def upstream_counters(url: str) -> dict[str, float]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("bench_upstream_"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def measure(args: argparse.Namespace, config: GatewayConfig, logs: Path) -> Outcome:
    services: list[Service] = []
    try:
        upstream, upstream_url = start_upstream(logs, args.load_cpus, args.chunks, args.gap_ms)
        services.append(upstream)
        gateway, url = start_gateway(config, upstream_url, args.gateway_cpus, logs, args.api_key)
        services.append(gateway)
        limit = open_files_limit(gateway.pid)
        needed = 2 * args.streams + 2000  # a client and a worker socket per stream, and spare
        if limit < needed:
            raise SystemExit(
                f"the gateway's open-files limit is {limit}, {args.streams} streams need "
                f">= {needed}: raise the hard limit (prlimit, or `ulimit -Hn` as root)"
            )
        time.sleep(1.0)  # let start-up allocations settle before the idle reading
        rss_idle = rss_bytes(gateway.pid)
        cpu_before = cpu_seconds(gateway.pid)
        ours_before = cpu_before + cpu_seconds(upstream.pid) + children_cpu_seconds()
        machine_before = machine_busy_seconds()
        poller = RssPoller(gateway.pid)
        poller.start()
        started = time.monotonic()
        stream_s = args.chunks * args.gap_ms / 1000
        load = run_streamload(
            url,
            args.load_cpus,
            args.chunks,
            args.streams,
            per_connection=1,
            ramp=args.ramp,
            timeout=stream_s + 120,
            api_key=args.api_key,
        )
        wall = time.monotonic() - started
        rss_peak = poller.stop()
        gateway_cpu = cpu_seconds(gateway.pid) - cpu_before
        ours = cpu_seconds(gateway.pid) + cpu_seconds(upstream.pid) + children_cpu_seconds()
        other = machine_busy_seconds() - machine_before - (ours - ours_before)
        rss_after = rss_bytes(gateway.pid)
        counters = upstream_counters(upstream_url)
        for service in services:
            if service.popen.poll() is not None:
                raise RuntimeError(f"{service.name} died:\n{service.tail()}")
        return Outcome(
            load,
            rss_idle,
            rss_peak,
            rss_after,
            gateway_cpu,
            int(counters.get("bench_upstream_peak_streams", 0)),
            int(counters.get("bench_upstream_streams_aborted_total", 0)),
            limit,
            wall,
            max(0.0, other),
        )
    finally:
        for service in reversed(services):
            service.stop()


def problems(args: argparse.Namespace, result: Outcome) -> list[str]:
    """Empty when every stream was valid, none was cut, and all were open at the same time."""
    load = result.load
    found = []
    if load.invalid:
        found.append(f"{load.invalid:,} invalid responses")
    if load.requests != args.streams:
        found.append(f"{load.requests:,} of {args.streams:,} streams completed valid")
    if result.upstream_aborted:
        found.append(f"{result.upstream_aborted:,} streams cut at the upstream")
    if load.peak_open != args.streams:
        found.append(f"only {load.peak_open:,} of {args.streams:,} streams were open at once")
    return found


def render(args: argparse.Namespace, config: GatewayConfig, result: Outcome, stamp: str) -> str:
    load = result.load
    valid = load.requests
    per_stream = (result.rss_peak - result.rss_idle) / max(1, load.peak_open) / 1024
    found = problems(args, result)

    def ms(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:,.1f}"

    rows = [
        ("streams started / completed valid", f"{args.streams:,} / {valid:,}"),
        ("invalid or dropped", f"{load.invalid + args.streams - valid:,}"),
        (
            "peak streams open at once (client / upstream)",
            f"{load.peak_open:,} / {result.upstream_peak:,}",
        ),
        (
            "gateway RSS idle → peak → after",
            f"{result.rss_idle / MIB:,.0f} → "
            f"{result.rss_peak / MIB:,.0f} → {result.rss_after / MIB:,.0f} MiB",
        ),
        ("RSS per open stream: (peak - idle) / peak open", f"{per_stream:,.1f} KiB"),
        (
            "gateway CPU, whole run / per stream",
            f"{result.gateway_cpu_s:,.1f} s / {result.gateway_cpu_s * 1e6 / args.streams:,.0f} µs",
        ),
        ("TTFT p50 / p99", f"{ms(load.ttft_p50_ms)} / {ms(load.ttft_p99_ms)} ms"),
        ("stream duration p50 / p99", f"{ms(load.p50_ms)} / {ms(load.p99_ms)} ms"),
        ("run time", f"{result.wall_s:,.1f} s"),
        ("gateway open-files limit", f"{result.open_files:,}"),
        (
            "other processes on the machine (should be near 0)",
            f"{result.other_cpu_s / result.wall_s * 100:.0f} % of a core",
        ),
    ]
    lines = [
        "# 5,000 open streams through one gateway process",
        "",
        "**PASSED**: every stream complete and valid, all open at once"
        if not found
        else f"**FAILED**: {'; '.join(found)}",
        "",
        f"- date: {stamp} UTC; gateway {config.describe()}",
        f"- {args.streams:,} streams, each one connection and one request: {args.chunks} chunks "
        f"{args.gap_ms:g} ms apart (+ usage chunk, [DONE]); connections opened over "
        f"{args.ramp:g} s",
        f"- gateway on CPU {args.gateway_cpus}; fake upstream and bench.streamload on CPU "
        f"{args.load_cpus}; RSS polled every 100 ms over the gateway's process tree",
        "",
        "| measure | value |",
        "|---|---|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
    ]
    if load.examples:
        lines += ["Invalid responses, e.g.:", "", *(f"- `{e}`" for e in load.examples), ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench streams5k", description=__doc__)
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--chunks", type=int, default=20, help="chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=1000.0, help="ms between chunks")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to open all streams")
    parser.add_argument("--label", default="bare", help="name of the gateway configuration")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--gateway-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.api_key = new_api_key()
    # A pool smaller than the streams (GATEWAY_MAX_UPSTREAM_CONNECTIONS) holds the rest back
    # in a queue inside the gateway: the run then fails its "all open at once" check. The one
    # fake worker stands for a fleet, so its in-flight cap (a vLLM batch: 256 by default) is
    # raised to the streams' count; otherwise the admission queue holds or refuses the rest.
    cap = {"GATEWAY_MAX_INFLIGHT_PER_WORKER": str(args.streams)}
    config = GatewayConfig(args.label, {**BASE_ENV, **cap, **parse_env(args.gateway_env)})
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    logs = args.out / f"logs-streams5k-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    stream_s = args.chunks * args.gap_ms / 1000
    print(
        f"streams5k: {args.streams} streams, about {args.ramp + stream_s:.0f} s; logs in "
        f"{logs} (the gateway is asked for ulimit -n {OPEN_FILES})",
        file=sys.stderr,
    )
    result = measure(args, config, logs)
    text = render(args, config, result, now.strftime("%Y-%m-%d %H:%M"))
    path = args.out / f"streams5k-{stamp}.md"
    path.write_text(text)
    print(text)
    print(f"streams5k: wrote {path}", file=sys.stderr)
    found = problems(args, result)
    if found:
        examples = f"; e.g. {result.load.examples[:3]}" if result.load.examples else ""
        print(f"STREAMS5K FAILED: {'; '.join(found)}{examples}", file=sys.stderr)
        return 1
    return 0
