"""What the gateway reads from a vLLM worker's /metrics: its saturation (for load-aware
routing), the size of its KV cache (for the prefix index) and when its process started (a
restarted worker has lost its prefix cache)."""

from __future__ import annotations

import re
from dataclasses import dataclass

WAITING_FULL = 5.0  # requests waiting in vLLM's own queue that count as saturated
KV_FULL = 0.8  # KV-cache usage that counts as saturated

_LABEL = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Scraped:
    saturation: float | None  # max(waiting / 5, kv_cache_usage / 0.8)
    waiting: float | None  # requests queued inside vLLM (all its engines)
    cache_tokens: int | None  # block_size x num_gpu_blocks of vllm:cache_config_info
    started: float | None  # process_start_time_seconds


def scrape(text: str) -> Scraped:
    waiting = kv = started = None
    cache_tokens = None
    for line in text.splitlines():
        if line.startswith("process_start_time_seconds "):
            started = _value(line)
        if not line.startswith("vllm:"):
            continue
        if line.startswith(("vllm:num_requests_waiting{", "vllm:num_requests_waiting ")):
            waiting = (waiting or 0.0) + _value(line)
        elif line.startswith(("vllm:kv_cache_usage_perc{", "vllm:kv_cache_usage_perc ")):
            kv = max(kv or 0.0, _value(line))
        elif line.startswith("vllm:cache_config_info{"):
            cache_tokens = (cache_tokens or 0) + _cache_tokens(line)
    saturation = None
    if waiting is not None or kv is not None:
        saturation = max((waiting or 0.0) / WAITING_FULL, (kv or 0.0) / KV_FULL)
    return Scraped(saturation, waiting, cache_tokens or None, started)


def saturation_from_metrics(text: str) -> float | None:
    """max(waiting/5, kv/0.8) from vLLM's Prometheus text, or None if neither is there."""
    return scrape(text).saturation


def _cache_tokens(line: str) -> int:
    labels = dict(_LABEL.findall(line))
    try:
        return int(labels["block_size"]) * int(labels["num_gpu_blocks"])
    except (KeyError, ValueError):
        return 0


def _value(line: str) -> float:
    try:
        return float(line.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0.0
