"""Markdown tables of the runs: one section per scenario, medians [min, max] over repetitions.

The gateway's added latency is taken per repetition (gateway run minus the direct run next to it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from bench.scenarios import PACED, LoadPlan, Run, offered_chunks_per_s
from bench.stats import Spread

DIRECT = "direct"

Metric = Callable[[Run], float]


def _cell(runs: Sequence[Run], metric: Metric, digits: int) -> str:
    return Spread.of([metric(run) for run in runs]).format(digits)


def _added(gateway: Sequence[Run], direct: Sequence[Run], metric: Metric, digits: int) -> str:
    by_rep = {run.repetition: metric(run) for run in direct}
    deltas = [metric(run) - by_rep[run.repetition] for run in gateway if run.repetition in by_rep]
    spread = Spread.of(deltas)
    return "-" if math.isnan(spread.median) else ("+" + spread.format(digits)).replace("+-", "-")


def _invalid(runs: Sequence[Run]) -> str:
    count = sum(run.load.invalid for run in runs)
    return "0" if count == 0 else f"**{count}**"


def _target_name(target: str) -> str:
    if target == DIRECT:
        return "direct to upstream"
    return "nginx (plain proxy)" if target == "nginx" else f"gateway `{target}`"


Column = tuple[str, Metric, int]

_COLUMNS: dict[str, list[Column]] = {
    "c1": [
        ("req/s", lambda r: r.requests_per_s, 0),
        ("p50 ms", lambda r: r.load.p50_ms, 3),
        ("p99 ms", lambda r: r.load.p99_ms, 3),
        ("gateway CPU µs/request", lambda r: r.cpu_us_per_request, 0),
    ],
    "c64": [
        ("req/s", lambda r: r.requests_per_s, 0),
        ("p50 ms", lambda r: r.load.p50_ms, 2),
        ("p99 ms", lambda r: r.load.p99_ms, 2),
        ("gateway CPU µs/request", lambda r: r.cpu_us_per_request, 0),
        ("gateway CPU % (1 core = 100)", lambda r: r.gateway_cpu_pct, 0),
        ("load-side CPU %", lambda r: r.load_side_cpu_pct, 0),
    ],
    "stream": [
        ("streams/s", lambda r: r.requests_per_s, 0),
        ("chunks/s", lambda r: r.chunks_per_s, 0),
        ("TTFT p50 ms", lambda r: r.load.ttft_p50_ms, 2),
        ("TTFT p99 ms", lambda r: r.load.ttft_p99_ms, 2),
        ("gateway CPU µs/chunk", lambda r: r.cpu_us_per_chunk, 1),
        ("gateway CPU µs/stream", lambda r: r.cpu_us_per_request, 0),
        ("gateway CPU % (1 core = 100)", lambda r: r.gateway_cpu_pct, 0),
        ("load-side CPU %", lambda r: r.load_side_cpu_pct, 0),
    ],
}
_PACED_COLUMNS: list[Column] = [
    ("chunks/s", lambda r: r.chunks_per_s, 0),
    ("% of offered", lambda r: 100 * r.chunks_per_s / r.offered_chunks_per_s, 0),
    ("TTFT p50 ms", lambda r: r.load.ttft_p50_ms, 2),
    ("TTFT p99 ms", lambda r: r.load.ttft_p99_ms, 2),
    ("gateway CPU µs/chunk", lambda r: r.cpu_us_per_chunk, 1),
    ("gateway CPU µs/stream", lambda r: r.cpu_us_per_request, 0),
    ("gateway CPU % (1 core = 100)", lambda r: r.gateway_cpu_pct, 0),
    ("load-side CPU %", lambda r: r.load_side_cpu_pct, 0),
]
_COLUMNS["paced128"] = _COLUMNS["paced1024"] = _PACED_COLUMNS

# Which columns get an "added by the gateway" row, and from which metric.
_ADDED: dict[str, set[str]] = {
    "c1": {"p50 ms", "p99 ms"},
    "c64": {"p50 ms", "p99 ms"},
    "stream": {"TTFT p50 ms", "TTFT p99 ms"},
    "paced128": {"TTFT p50 ms", "TTFT p99 ms"},
    "paced1024": {"TTFT p50 ms", "TTFT p99 ms"},
}


def scenario_table(scenario: str, runs: Sequence[Run], targets: Sequence[str]) -> str:
    columns = _COLUMNS[scenario]
    header = ["target", *(name for name, _, _ in columns), "invalid"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    mine = [run for run in runs if run.scenario == scenario]
    direct = [run for run in mine if run.target == DIRECT]
    for target in targets:
        runs_of = [run for run in mine if run.target == target]
        if not runs_of:
            continue
        cells = [_cell(runs_of, metric, digits) for _, metric, digits in columns]
        lines.append(
            f"| {_target_name(target)} | " + " | ".join(cells) + f" | {_invalid(runs_of)} |"
        )
    for target in targets:
        runs_of = [run for run in mine if run.target == target]
        if target == DIRECT or not runs_of or not direct:
            continue
        cells = [
            _added(runs_of, direct, metric, digits) if name in _ADDED[scenario] else ""
            for name, metric, digits in columns
        ]
        lines.append(f"| **added by `{target}`** | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def titles(plan: LoadPlan) -> dict[str, str]:
    return {
        "c1": f"c={plan.low_concurrency}, non-streaming: added latency",
        "c64": f"c={plan.high_concurrency}, non-streaming: throughput and CPU per request",
        "stream": f"c={plan.high_concurrency}, streaming {plan.chunks} chunks (+ usage chunk): "
        "relay cost and TTFT",
        **{
            name: f"{streams} paced streams of {plan.chunks} chunks (+ usage), one chunk per "
            f"stream every {plan.gap_ms:g} ms; offered "
            f"{offered_chunks_per_s(streams, plan.chunks, plan.gap_ms):,.0f} chunks/s"
            for name, streams in PACED.items()
        },
    }


def render(
    header: Sequence[str], runs: Sequence[Run], targets: Sequence[str], plan: LoadPlan
) -> str:
    other = Spread.of([run.other_cpu_pct for run in runs])
    noise = (
        f"- other processes on the machine during the runs: {other.format(0)} % of a core "
        "(should be near 0)"
    )
    parts = ["# Gateway overhead benchmark", "", *header, noise, ""]
    for scenario, title in titles(plan).items():
        if any(run.scenario == scenario for run in runs):
            parts += [f"## {scenario}: {title}", "", scenario_table(scenario, runs, targets), ""]
    return "\n".join(parts)
