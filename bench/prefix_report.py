"""The prefix-cache benchmark's results: one record per run, and a Markdown table per workload
whose cells are medians over the runs of a policy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.engine_metrics import CacheCounts
from bench.prefix_drive import Sample, Traffic
from bench.prefix_workloads import WORKLOADS
from bench.stats import percentile


@dataclass
class RunResult:
    workload: str
    policy: str
    repetition: int
    traffic: Traffic
    cache: CacheCounts  # deltas over the run, summed over workers
    routing: dict[str, float] = field(default_factory=dict)  # the gateway's decisions by reason

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.traffic.samples if s.ok]

    @property
    def failed(self) -> int:
        return len(self.traffic.samples) - len(self.ok)

    def ttfts(self, later_turns: bool = False) -> list[float]:
        return [s.ttft for s in self.ok if s.ttft is not None and (not later_turns or s.turn > 0)]

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "policy": self.policy,
            "repetition": self.repetition,
            "cache_hits": self.cache.hits,
            "cache_queries": self.cache.queries,
            "routing": self.routing,
            "summary": {k: None if math.isnan(v) else v for k, v in summary(self).items()},
            **self.traffic.to_json(),
        }


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def summary(run: RunResult) -> dict[str, float]:
    """The run's figures; times in ms."""
    ttft, later = run.ttfts(), run.ttfts(later_turns=True)
    latency = [s.latency for s in run.ok]
    prompt = [s.prompt_tokens for s in run.ok]
    wall = run.traffic.wall or math.nan
    return {
        "ttft_p50": percentile(ttft, 50) * 1000,
        "ttft_p90": percentile(ttft, 90) * 1000,
        "ttft_p99": percentile(ttft, 99) * 1000,
        "ttft_mean": _mean(ttft) * 1000,
        "later_ttft_p50": percentile(later, 50) * 1000,
        "later_ttft_p90": percentile(later, 90) * 1000,
        "later_ttft_mean": _mean(later) * 1000,
        "e2e_p50": percentile(latency, 50) * 1000,
        "e2e_p99": percentile(latency, 99) * 1000,
        "requests_per_s": len(run.ok) / wall,
        "prompt_tokens_per_s": sum(prompt) / wall,
        "prompt_tokens_mean": _mean(prompt),
        "hit_rate_pct": run.cache.hit_rate * 100,
    }


Column = tuple[str, str, int]  # header, summary key, digits

COLUMNS: list[Column] = [
    ("TTFT p50 ms", "ttft_p50", 0),
    ("TTFT p90 ms", "ttft_p90", 0),
    ("TTFT p99 ms", "ttft_p99", 0),
    ("TTFT mean ms", "ttft_mean", 0),
    ("e2e p50 ms", "e2e_p50", 0),
    ("e2e p99 ms", "e2e_p99", 0),
    ("req/s", "requests_per_s", 2),
    ("prompt tok/s", "prompt_tokens_per_s", 0),
    ("prompt tok/req", "prompt_tokens_mean", 0),
    ("vLLM prefix hit %", "hit_rate_pct", 1),
]
LATER_COLUMNS: list[Column] = [
    ("turns 2+ TTFT p50 ms", "later_ttft_p50", 0),
    ("turns 2+ TTFT p90 ms", "later_ttft_p90", 0),
    ("turns 2+ TTFT mean ms", "later_ttft_mean", 0),
]


def _median(runs: Sequence[RunResult], key: str) -> float:
    values = [v for v in (summary(run)[key] for run in runs) if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def _routing(runs: Sequence[RunResult]) -> str:
    totals: dict[str, float] = {}
    for run in runs:
        for reason, count in run.routing.items():
            totals[reason] = totals.get(reason, 0.0) + count
    return ", ".join(f"{reason} {count:.0f}" for reason, count in totals.items()) or "-"


def _fmt(value: float, digits: int) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def workload_table(workload: str, runs: Sequence[RunResult], policies: Sequence[str]) -> str:
    columns = COLUMNS[:4] + (LATER_COLUMNS if workload == "a" else []) + COLUMNS[4:]
    header = ["policy", *(name for name, _, _ in columns), "gateway routing (all runs)", "failed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for policy in policies:
        mine = [r for r in runs if r.workload == workload and r.policy == policy]
        if not mine:
            continue
        cells = [_fmt(_median(mine, key), digits) for _, key, digits in columns]
        failed = sum(r.failed for r in mine)
        cells += [_routing(mine), str(failed) if not failed else f"**{failed}**"]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(header: Sequence[str], runs: Sequence[RunResult], policies: Sequence[str]) -> str:
    parts = ["# Prefix-cache routing on real vLLM CPU engines", "", *header, ""]
    for workload, title in WORKLOADS.items():
        if any(run.workload == workload for run in runs):
            parts += [f"## ({workload}) {title}", "", workload_table(workload, runs, policies), ""]
    return "\n".join(parts)


def progress_line(run: RunResult) -> str:
    figures = {key: _fmt(value, 1) for key, value in summary(run).items()}
    errors = [sample.error for sample in run.traffic.samples if not sample.ok]
    return (
        f"({run.workload}) {run.policy} run {run.repetition + 1}: {run.traffic.wall:.1f} s, "
        f"TTFT p50 {figures['ttft_p50']} ms p90 {figures['ttft_p90']} ms, "
        f"vLLM prefix hit {figures['hit_rate_pct']} %, failed {run.failed}"
        + (f" (e.g. {errors[0]})" if errors else "")
    )
