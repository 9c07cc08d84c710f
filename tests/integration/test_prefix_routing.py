"""Cache-aware routing against fake workers: a conversation's later turns follow its first to
one worker, conversations still spread over the workers, and two gateway replicas sharing Redis
send a shared prefix to the same worker."""

from __future__ import annotations

import random
import time
from pathlib import Path

import httpx

from tests.integration.test_routing import FAST_HEALTH, Fleet, fleet, gateway, metric

PREFIX_ON = {**FAST_HEALTH, "GATEWAY_PREFIX_ROUTING": "true"}


def conversation(seed: int, turns: int) -> list[dict[str, str]]:
    """A system prompt of its own (~2 KB) and `turns` user turns with the answers between."""
    words = random.Random(seed).choices(["alpha", "beta", "gamma", "delta", "omega"], k=400)
    messages = [{"role": "system", "content": " ".join(words)}]
    for turn in range(turns):
        if turn:
            messages.append({"role": "assistant", "content": f"answer {turn} " * 30})
        messages.append({"role": "user", "content": f"question {turn} " * 30})
    return messages


def served_by(workers: Fleet, gateway_url: str, messages: list[dict[str, str]]) -> int:
    """Send one chat request; return the index of the worker that got it."""
    before = [workers.requests(i) for i in range(len(workers.urls))]
    body = {"model": "m", "messages": messages, "max_tokens": 4}
    reply = httpx.post(gateway_url + "/v1/chat/completions", json=body, timeout=10)
    assert reply.status_code == 200, reply.text
    after = [workers.requests(i) for i in range(len(workers.urls))]
    (index,) = [i for i in range(len(after)) if after[i] > before[i]]
    return index


def test_later_turns_follow_the_first_and_conversations_spread(tmp_path: Path) -> None:
    with fleet(tmp_path, 3) as workers, gateway(tmp_path, workers.models(), PREFIX_ON) as url:
        first_turns = {seed: served_by(workers, url, conversation(seed, 1)) for seed in range(9)}
        assert len(set(first_turns.values())) > 1  # new prefixes go by load: they spread
        for turns in (2, 3):
            for seed, worker in first_turns.items():
                assert served_by(workers, url, conversation(seed, turns)) == worker
        assert metric(url, "gateway_routing_decisions_total", 'reason="cache"') == 18
        predicted = metric(url, "gateway_prefix_cached_blocks_total", 'worker="w0"')
        sent = metric(url, "gateway_prefix_prompt_blocks_total", 'worker="w0"')
        assert 0 < predicted < sent  # later turns hit on their history, never on the new turn


def prefix_blocks(gateway_url: str, worker: int) -> int:
    blocks: int = httpx.get(gateway_url + "/ready").json()["workers"][f"m/w{worker}"][
        "prefix_blocks"
    ]
    return blocks


def test_the_index_follows_each_workers_cache_size_and_forgets_a_restarted_one(
    tmp_path: Path,
) -> None:
    with fleet(tmp_path, 2) as workers, gateway(tmp_path, workers.models(), PREFIX_ON) as url:
        for worker in (0, 1):  # 32 x 16 tokens, at the 4 bytes a token usage says: 4 blocks
            workers.control(worker, cache_blocks=32, prompt_tokens=800)
        time.sleep(0.5)  # a health round reads it
        for seed in range(4):
            served_by(workers, url, conversation(seed, 3))
        assert 0 < prefix_blocks(url, 0) <= 4
        assert 0 < prefix_blocks(url, 1) <= 4
        workers.restart(0)
        deadline = time.monotonic() + 5
        while prefix_blocks(url, 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert prefix_blocks(url, 0) == 0  # a new process: its prefix cache is empty
        assert prefix_blocks(url, 1) > 0


def test_two_replicas_sharing_redis_send_a_shared_prefix_to_the_same_worker(
    tmp_path: Path, redis_url: str
) -> None:
    env = {**PREFIX_ON, "GATEWAY_REDIS_URL": redis_url}
    with (
        fleet(tmp_path, 3) as workers,
        gateway(tmp_path, workers.models(), env) as first,
        gateway(tmp_path, workers.models(), env) as second,
    ):
        chosen = {seed: served_by(workers, first, conversation(seed, 1)) for seed in range(8)}
        assert len(set(chosen.values())) > 1
        time.sleep(0.3)  # the decisions reach the other replica through Redis pub/sub
        for seed, worker in chosen.items():
            assert served_by(workers, second, conversation(seed, 2)) == worker
        assert metric(second, "gateway_routing_decisions_total", 'reason="cache"') == 8
