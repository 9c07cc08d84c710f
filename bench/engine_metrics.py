"""Counters read from /metrics (vLLM's prefix cache, the gateway's routing decisions) and the
reset of vLLM's prefix cache between runs (POST /reset_prefix_cache, needs VLLM_SERVER_DEV_MODE=1).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
ROUTING = "gateway_routing_decisions_total"


def samples(client: httpx.Client, url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named `name` in `url`/metrics, with its labels."""
    response = client.get(url + "/metrics")
    response.raise_for_status()
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == name
    ]


@dataclass(frozen=True)
class CacheCounts:
    """vLLM's prefix-cache counters summed over workers, in prompt tokens."""

    hits: float
    queries: float

    def __sub__(self, other: CacheCounts) -> CacheCounts:
        return CacheCounts(self.hits - other.hits, self.queries - other.queries)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else float("nan")


def cache_counts(workers: Sequence[str]) -> CacheCounts:
    hits = queries = 0.0
    with httpx.Client(timeout=10) as client:
        for url in workers:
            hits += sum(value for _, value in samples(client, url, HITS))
            queries += sum(value for _, value in samples(client, url, QUERIES))
    return CacheCounts(hits, queries)


def routing_decisions(gateway: str) -> dict[str, float]:
    """The gateway's decisions by reason; empty when it has no such counter."""
    decisions: dict[str, float] = {}
    with httpx.Client(timeout=10) as client:
        for labels, value in samples(client, gateway, ROUTING):
            reason = labels.get("reason", "?")
            decisions[reason] = decisions.get(reason, 0.0) + value
    return {reason: count for reason, count in sorted(decisions.items()) if count}


def reset_prefix_caches(workers: Sequence[str], timeout: float = 30.0) -> None:
    """Empty every worker's prefix cache; vLLM refuses (success: false) while blocks are in use."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as client:
        for url in workers:
            while True:
                response = client.post(url + "/reset_prefix_cache")
                if response.status_code == 404:
                    raise RuntimeError(f"{url}: no /reset_prefix_cache (VLLM_SERVER_DEV_MODE=1?)")
                response.raise_for_status()
                if response.json().get("success", True):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url}: prefix cache still in use after {timeout:g} s")
                time.sleep(0.5)
