"""The scenarios; one run = one load against one target, with CPU time read around it.

c1: c=1 non-streaming (latency); c64: c=64 non-streaming (throughput, CPU per request);
stream: c=64 SSE streams (chunks/s, TTFT, CPU per chunk and per stream);
paced128, paced1024: 128 or 1,024 open streams, each getting one chunk per engine step (every
--gap-ms) from the fake upstream: the fleet-scale case, where chunks are small and many and the
gateway's cost per chunk and the TTFT it adds under that load are what count.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.loads import LoadResult, run_streamload, run_wrk
from bench.procs import Service, children_cpu_seconds, cpu_seconds, machine_busy_seconds
from bench.targets import Target

SCENARIOS = ("c1", "c64", "stream", "paced128", "paced1024")
PACED = {"paced128": 128, "paced1024": 1024}  # open streams of the paced scenarios


def offered_chunks_per_s(streams: int, chunks: int, gap_ms: float) -> float:
    """The chunk rate `streams` back-to-back streams offer: each carries chunks + 1 events (the
    usage chunk) over (chunks - 1) engine steps between its first and its last chunk."""
    return streams * (chunks + 1) / ((chunks - 1) * gap_ms / 1000)


@dataclass(frozen=True, slots=True)
class LoadPlan:
    seconds: int
    body_file: Path
    chunks: int = 32
    gap_ms: float = 10.0
    low_concurrency: int = 1
    high_concurrency: int = 64
    load_cpus: str = "1"
    api_key: str = ""


@dataclass(slots=True)
class Run:
    scenario: str
    target: str
    repetition: int
    load: LoadResult
    gateway_cpu_s: float  # NaN for the direct baseline
    load_side_cpu_s: float  # fake upstream + load generator (they share a CPU)
    other_cpu_s: float  # everything else on the machine: a busy neighbour makes noise
    streams: int = 0  # open streams offered (stream scenarios)
    offered_chunks_per_s: float = math.nan

    def per_second(self, count: float) -> float:
        return count / self.load.elapsed_s if self.load.elapsed_s else math.nan

    @property
    def requests_per_s(self) -> float:
        return self.per_second(self.load.requests)

    @property
    def chunks_per_s(self) -> float:
        return self.per_second(self.load.chunks)

    @property
    def cpu_us_per_request(self) -> float:
        return self.gateway_cpu_s * 1e6 / self.load.requests if self.load.requests else math.nan

    @property
    def cpu_us_per_chunk(self) -> float:
        return self.gateway_cpu_s * 1e6 / self.load.chunks if self.load.chunks else math.nan

    @property
    def gateway_cpu_pct(self) -> float:
        return self.per_second(self.gateway_cpu_s) * 100

    @property
    def load_side_cpu_pct(self) -> float:
        return self.per_second(self.load_side_cpu_s) * 100

    @property
    def other_cpu_pct(self) -> float:
        return self.per_second(self.other_cpu_s) * 100

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("requests_per_s", "chunks_per_s", "cpu_us_per_request", "cpu_us_per_chunk"):
            data[name] = getattr(self, name)
        data["gateway_cpu_pct"] = self.gateway_cpu_pct
        data["load_side_cpu_pct"] = self.load_side_cpu_pct
        data["other_cpu_pct"] = self.other_cpu_pct
        return data


@dataclass(frozen=True, slots=True)
class CpuTimes:
    gateway: float  # NaN for the direct baseline
    load_side: float
    machine: float  # all CPUs busy

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(
            self.gateway - other.gateway,
            self.load_side - other.load_side,
            self.machine - other.machine,
        )

    @property
    def other(self) -> float:
        ours = self.load_side + (0.0 if math.isnan(self.gateway) else self.gateway)
        return max(0.0, self.machine - ours)


def _wrk_run(
    target: Target, upstream: Service, concurrency: int, plan: LoadPlan
) -> tuple[LoadResult, CpuTimes]:
    def times() -> CpuTimes:
        gateway = cpu_seconds(target.service.pid) if target.service else math.nan
        load_side = cpu_seconds(upstream.pid) + children_cpu_seconds()
        return CpuTimes(gateway, load_side, machine_busy_seconds())

    before = times()
    load = run_wrk(
        target.url + "/v1/chat/completions",
        concurrency,
        plan.seconds,
        plan.load_cpus,
        plan.body_file,
        plan.api_key,
    )
    return load, times() - before


def stream_run(
    target: Target, upstream: Service, plan: LoadPlan, concurrency: int
) -> tuple[LoadResult, CpuTimes]:
    marks: dict[str, CpuTimes] = {}

    def on_mark(name: str, load_pid: int) -> None:
        gateway = cpu_seconds(target.service.pid) if target.service else math.nan
        load_side = cpu_seconds(upstream.pid) + cpu_seconds(load_pid)
        marks[name] = CpuTimes(gateway, load_side, machine_busy_seconds())

    # Streams of equal length started together stay in lockstep, and so would their requests:
    # the connections open over one stream's length, the window opens after two of them (at
    # least 1 s), and a random pause of up to one step before each request unties arrivals
    # from the steps.
    stream_s = plan.chunks * plan.gap_ms / 1000
    load = run_streamload(
        target.url,
        plan.load_cpus,
        plan.chunks,
        concurrency,
        seconds=plan.seconds,
        ramp=stream_s,
        think_ms=plan.gap_ms,
        warmup=max(1.0, 2 * stream_s),
        api_key=plan.api_key,
        on_mark=on_mark,
    )
    return load, marks["end"] - marks["start"]


def run_once(
    scenario: str, target: Target, upstream: Service, plan: LoadPlan, repetition: int
) -> Run:
    streams, offered = 0, math.nan
    if scenario == "c1":
        load, cpu = _wrk_run(target, upstream, plan.low_concurrency, plan)
    elif scenario == "c64":
        load, cpu = _wrk_run(target, upstream, plan.high_concurrency, plan)
    elif scenario == "stream" or scenario in PACED:
        streams = PACED.get(scenario, plan.high_concurrency)
        load, cpu = stream_run(target, upstream, plan, streams)
        offered = offered_chunks_per_s(streams, plan.chunks, plan.gap_ms)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    for service in (target.service, upstream):
        if service is not None and service.popen.poll() is not None:
            raise RuntimeError(f"{service.name} died during {scenario}:\n{service.tail()}")
    return Run(
        scenario,
        target.name,
        repetition,
        load,
        cpu.gateway,
        cpu.load_side,
        cpu.other,
        streams,
        offered,
    )
