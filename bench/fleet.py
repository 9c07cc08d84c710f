"""`python -m bench fleet`: the streaming rate one gateway process sustains, and two.

For each process count the offered rate is stepped up (more open paced streams: one chunk per
stream every --gap-ms from the fake upstream) until the TTFT the gateway adds passes
--limit-ms at p99 (against the direct run of the same step) or the gateway delivers less than
--min-share (90 %) of what the direct run got. The last step that passed is the rate
sustained, in tokens/s (content chunks/s: one token per chunk, as vLLM streams).
Offered = streams x (chunks + 1) /
((chunks - 1) x gap) events/s. The README turns this into gateway cores for a token rate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.loads import LoadResult
from bench.procs import Service, start_upstream
from bench.scenarios import LoadPlan, offered_chunks_per_s, stream_run
from bench.targets import BASE_ENV, Target, new_api_key, parse_config_set, start_gateway

OUT = Path(__file__).resolve().parent / "out"
STEPS = (64, 128, 256, 384, 512, 768, 1024, 1536, 2048)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench fleet", description=__doc__)
    parser.add_argument("--processes", default="1,2", help="gateway process counts (1,2)")
    parser.add_argument(
        "--steps", default=",".join(map(str, STEPS)), help="open streams per step, rising"
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--limit-ms", type=float, default=5.0, help="TTFT added at p99, max")
    parser.add_argument(
        "--min-share",
        type=float,
        default=0.9,
        help="a step also fails when the gateway delivers less than this share of the direct "
        "chunk rate (default 0.9)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="run every step even after one failed (for the CPU-bound capacity column)",
    )
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument(
        "--config-set", default="bare", metavar="NAME:KEY=V,...", help="as for python -m bench"
    )
    parser.add_argument("--gateway-cpus", default="0", help="CPUs of a 1-process gateway")
    parser.add_argument(
        "--gateway-cpus-multi", default="0,1", help="CPUs of a gateway of several processes"
    )
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--quick", action="store_true", help="smoke run: two small steps, 1 s")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seconds = "8,16", 1.0
    return args


@dataclass(frozen=True, slots=True)
class Step:
    processes: int
    streams: int
    offered: float  # events/s
    direct_chunks_per_s: float
    chunks_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    added_p50_ms: float
    added_p99_ms: float
    gateway_cpu_pct: float
    invalid: int

    @property
    def per_core(self) -> float:
        """Chunks/s one fully busy core would relay at this step's CPU cost per chunk."""
        busy = self.gateway_cpu_pct / 100
        return self.chunks_per_s / busy if busy > 0 else math.nan

    @property
    def passed(self) -> bool:
        return (
            self.invalid == 0
            and self.added_p99_ms <= LIMIT[0]
            and self.chunks_per_s >= LIMIT[1] * self.direct_chunks_per_s
        )


LIMIT = [5.0, 0.9]  # set from --limit-ms and --min-share


def _rate(load: LoadResult) -> float:
    return load.chunks / load.elapsed_s if load.elapsed_s else math.nan


def run_steps(
    args: argparse.Namespace, processes: int, logs: Path, api_key: str
) -> tuple[list[Step], Service | None]:
    services: list[Service] = []
    steps: list[Step] = []
    try:
        upstream, upstream_url = start_upstream(logs, args.load_cpus, args.chunks, args.gap_ms)
        services.append(upstream)
        config = parse_config_set(args.config_set, dict(BASE_ENV), processes)
        cpus = args.gateway_cpus if processes == 1 else args.gateway_cpus_multi
        gateway, url = start_gateway(config, upstream_url, cpus, logs, api_key)
        services.append(gateway)
        plan = LoadPlan(
            seconds=int(max(1, args.seconds)),
            body_file=logs / "unused.json",
            chunks=args.chunks,
            gap_ms=args.gap_ms,
            load_cpus=args.load_cpus,
            api_key=api_key,
        )
        direct = Target("direct", upstream_url)
        target = Target(config.label, url, gateway)
        for streams in (int(s) for s in args.steps.split(",")):
            base, _ = stream_run(direct, upstream, plan, streams)
            load, cpu = stream_run(target, upstream, plan, streams)
            step = Step(
                processes,
                streams,
                offered_chunks_per_s(streams, args.chunks, args.gap_ms),
                _rate(base),
                _rate(load),
                load.ttft_p50_ms,
                load.ttft_p99_ms,
                load.ttft_p50_ms - base.ttft_p50_ms,
                load.ttft_p99_ms - base.ttft_p99_ms,
                cpu.gateway / load.elapsed_s * 100 if load.elapsed_s else math.nan,
                load.invalid + base.invalid,
            )
            steps.append(step)
            print(
                f"  {processes} process(es), {streams:5} streams: {step.chunks_per_s:9,.0f} "
                f"chunks/s (direct {step.direct_chunks_per_s:,.0f}), TTFT added p99 "
                f"{step.added_p99_ms:+.2f} ms, CPU {step.gateway_cpu_pct:.0f} % "
                f"{'ok' if step.passed else 'FAILED'}",
                file=sys.stderr,
            )
            if not step.passed and not args.keep_going:
                break
        return steps, gateway
    finally:
        for service in reversed(services):
            service.stop()


def tokens_per_s(step: Step, chunks: int) -> float:
    """Content chunks (tokens) per second: the usage chunk is not a token."""
    return step.chunks_per_s * chunks / (chunks + 1)


def render(args: argparse.Namespace, steps: list[Step], stamp: str, load: str) -> str:
    lines = [
        f"# Gateway fleet sizing: streaming rate sustained per process ({stamp} UTC)",
        "",
        f"- config `{args.config_set}`; streams of {args.chunks} chunks, one every "
        f"{args.gap_ms:g} ms; {args.seconds:g} s per run; a step passes while the TTFT added at "
        f"p99 stays <= {args.limit_ms:g} ms and the gateway delivers >= "
        f"{100 * args.min_share:g} % of the direct rate",
        f"- gateway CPUs: {args.gateway_cpus} (1 process), {args.gateway_cpus_multi} (more); "
        f"load and fake upstream on CPU {args.load_cpus}; load average at the start: {load}",
        "",
        "| processes | streams | offered events/s | direct chunks/s | gateway chunks/s | TTFT p50 "
        "ms | TTFT p99 ms | added p50 ms | added p99 ms | gateway CPU % | chunks/s per busy "
        "core | invalid | passed |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        lines.append(
            f"| {s.processes} | {s.streams} | {s.offered:,.0f} | {s.direct_chunks_per_s:,.0f} | "
            f"{s.chunks_per_s:,.0f} | {s.ttft_p50_ms:.2f} | {s.ttft_p99_ms:.2f} | "
            f"{s.added_p50_ms:+.2f} | {s.added_p99_ms:+.2f} | {s.gateway_cpu_pct:.0f} | "
            f"{s.per_core:,.0f} | {s.invalid} | {'yes' if s.passed else '**no**'} |"
        )
    lines += [
        "",
        "| processes | tokens/s sustained (TTFT added p99 within the limit) | per process | "
        "tokens/s per busy core at the highest step (CPU-bound capacity) |",
        "|---|---|---|---|",
    ]
    for processes in sorted({s.processes for s in steps}):
        mine = [s for s in steps if s.processes == processes]
        passed = [s for s in mine if s.passed]
        best = max((tokens_per_s(s, args.chunks) for s in passed), default=0.0)
        top = max(mine, key=lambda s: s.streams)
        capacity = top.per_core * args.chunks / (args.chunks + 1)
        lines.append(f"| {processes} | {best:,.0f} | {best / processes:,.0f} | {capacity:,.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    LIMIT[:] = [args.limit_ms, args.min_share]
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    logs = args.out / f"fleet-logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    api_key = new_api_key()
    steps: list[Step] = []
    for processes in (int(p) for p in args.processes.split(",")):
        found, _ = run_steps(args, processes, logs, api_key)
        steps += found
    text = render(args, steps, now.strftime("%Y-%m-%d %H:%M"), load)
    result = args.out / f"fleet-{stamp}.md"
    result.write_text(text)
    (args.out / f"fleet-{stamp}.json").write_text(json.dumps([asdict(s) for s in steps], indent=1))
    print(text)
    print(f"bench fleet: wrote {result}", file=sys.stderr)
    return 1 if any(s.invalid for s in steps) else 0
