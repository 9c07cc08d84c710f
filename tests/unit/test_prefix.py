"""Cache-aware routing without sockets: the prompt's chained block hashes, the prefix index
(match, LRU bound, forgetting a restarted worker) and the scoring rules that weigh the expected
cache hit against load."""

from __future__ import annotations

import orjson
import pytest

from gateway.api.validation import parse_request
from gateway.request import Endpoint
from gateway.routing.cache_aware import PrefixRouting, PrefixSettings
from gateway.routing.policy import Choice, Preference, choose
from gateway.routing.prefix import PrefixIndex, block_hashes
from gateway.routing.registry import ModelRoute, Worker

NOW = 1000.0
STALE = 3.0
BLOCK = 64
SETTINGS = PrefixSettings(
    block_bytes=BLOCK, bytes_per_token=4.0, cache_tokens=10_000, balance=0.25, min_blocks=1
)
SYSTEM = "You are a careful assistant. " * 20  # ~580 bytes: several whole blocks


def hashes_of(body: bytes, endpoint: Endpoint = Endpoint.CHAT) -> list[int]:
    routing = PrefixRouting.for_workers(1, SETTINGS)
    return routing.hashes(parse_request(endpoint, body))


def chat(*messages: tuple[str, str], **extra: object) -> bytes:
    return orjson.dumps(
        {"model": "m", "messages": [{"role": r, "content": c} for r, c in messages], **extra}
    )


# --- hashing ------------------------------------------------------------------------------


def test_a_later_turn_starts_with_the_blocks_of_the_earlier_one() -> None:
    first = hashes_of(chat(("system", SYSTEM), ("user", "What is a prefix cache? " * 5)))
    second = hashes_of(
        chat(
            ("system", SYSTEM),
            ("user", "What is a prefix cache? " * 5),
            ("assistant", "It keeps the attention state of a prompt's start. " * 3),
            ("user", "And why route by it?"),
        )
    )
    assert len(first) >= 10
    assert second[: len(first)] == first
    assert len(second) > len(first)


def test_key_order_whitespace_and_other_fields_do_not_change_the_hashes() -> None:
    compact = chat(("system", SYSTEM), ("user", "hello " * 40), stream=True)
    spaced = (
        b'{ "messages" : [ {"content": '
        + orjson.dumps(SYSTEM)
        + b', "role" : "system"},\n  {"role":"user",   "content": '
        + orjson.dumps("hello " * 40)
        + b'} ],\n "model": "m", "temperature": 0.2, "max_tokens": 7 }'
    )
    assert hashes_of(spaced) == hashes_of(compact)


def test_text_parts_hash_like_the_same_text_as_a_string() -> None:
    as_string = chat(("user", SYSTEM))
    as_parts = orjson.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": SYSTEM}]}],
        }
    )
    assert hashes_of(as_parts) == hashes_of(as_string)


def test_different_prompts_differ_from_the_first_block_and_a_role_counts() -> None:
    one = hashes_of(chat(("system", SYSTEM)))
    other = hashes_of(chat(("system", "You are terse. " * 40)))
    as_user = hashes_of(chat(("user", SYSTEM)))
    assert one[0] != other[0]
    assert one[0] != as_user[0]


def test_only_whole_blocks_are_hashed_and_completions_hash_their_prompt() -> None:
    assert block_hashes(b"x" * (BLOCK * 3 - 1), BLOCK) == block_hashes(b"x" * (BLOCK * 2), BLOCK)
    assert len(block_hashes(b"x" * (BLOCK - 1), BLOCK)) == 0
    prompt = orjson.dumps({"model": "m", "prompt": "once upon a time " * 20})
    longer = orjson.dumps({"model": "m", "prompt": "once upon a time " * 20 + "there was"})
    short = hashes_of(prompt, Endpoint.COMPLETIONS)
    assert short
    assert hashes_of(longer, Endpoint.COMPLETIONS)[: len(short)] == short


# --- the index ----------------------------------------------------------------------------


def test_match_counts_each_workers_leading_blocks_only() -> None:
    index = PrefixIndex(slots=3, capacity=100)
    index.record(0, [1, 2, 3, 4])
    index.record(1, [1, 2, 9])
    index.record(2, [2, 3, 4])  # holds later blocks but not the first: no prefix hit
    assert index.match([1, 2, 3, 4, 5], 3) == [4, 2, 0]
    assert index.match([7, 1], 3) == [0, 0, 0]


def test_each_worker_keeps_its_most_recent_blocks_within_its_capacity() -> None:
    index = PrefixIndex(slots=2, capacity=3)
    index.record(0, [10, 11])
    index.record(0, [1])
    index.record(0, [10])  # touched again: 11 is now the least recently used
    index.record(0, [4])  # evicts it
    assert index.size(0) == 3
    assert index.match([10, 11], 2) == [1, 0]
    assert index.match([1], 2) == [1, 0]
    index.set_capacity(0, 1)
    assert index.match([4], 2) == [1, 0]
    assert index.size(0) == 1


def test_under_pressure_a_chain_loses_its_tail_first() -> None:
    index = PrefixIndex(slots=1, capacity=4)
    index.record(0, [1, 2, 3, 4])
    index.record(0, [7, 8])  # two more blocks: two must go
    assert index.match([1, 2, 3, 4], 1) == [2]  # the head of the first chain still matches
    assert index.match([7, 8], 1) == [2]


def test_forgetting_a_worker_leaves_the_others() -> None:
    index = PrefixIndex(slots=2, capacity=10)
    index.record(0, [1, 2])
    index.record(1, [1, 2])
    index.forget(0)
    assert index.match([1, 2], 2) == [0, 2]
    assert index.size(0) == 0


# --- scoring ------------------------------------------------------------------------------


def route(*inflight: int, cap: int = 10, balance: float = 0.25) -> ModelRoute:
    workers = tuple(
        Worker(f"w{i}", "m", f"http://w{i}", n, slot=i, scraped_at=NOW)
        for i, n in enumerate(inflight)
    )
    settings = PrefixSettings(
        block_bytes=BLOCK, bytes_per_token=4.0, cache_tokens=10_000, balance=balance, min_blocks=1
    )
    prefix = PrefixRouting.for_workers(len(workers), settings)
    return ModelRoute("m", workers, max_inflight_per_worker=cap, prefix=prefix)


def pick(r: ModelRoute, blocks: list[int], session: str | None = None) -> Choice:
    choice = choose(r, NOW, STALE, prefer=Preference(session=session, prefix=blocks))
    assert choice is not None
    return choice


def test_the_worker_holding_the_longest_prefix_wins_over_a_less_loaded_one() -> None:
    r = route(2, 0, 0)
    assert r.prefix is not None
    r.prefix.index.record(0, [1, 2, 3])
    r.prefix.index.record(2, [1])
    choice = pick(r, [1, 2, 3, 4])
    assert (choice.worker.name, choice.reason, choice.cached_blocks) == ("w0", "cache", 3)


def test_load_wins_when_the_cache_worker_is_busier_by_more_than_the_balance() -> None:
    r = route(3, 0, 1)  # w0 30 % loaded, w1 idle: 0.3 > 0.25
    assert r.prefix is not None
    r.prefix.index.record(0, [1, 2, 3])
    choice = pick(r, [1, 2, 3])
    assert (choice.worker.name, choice.reason) == ("w1", "fallback")
    r.workers[0].inflight = 2  # 20 % against 0 %: within the balance, the cache wins again
    assert pick(r, [1, 2, 3]).worker.name == "w0"


def test_a_saturated_or_unhealthy_worker_is_never_chosen_for_its_cache() -> None:
    r = route(0, 0, 0, balance=10.0)  # a balance so loose that only health can say no
    assert r.prefix is not None
    r.prefix.index.record(0, [1, 2, 3])
    r.prefix.index.record(1, [1, 2])
    r.workers[0].saturation = 1.0  # vLLM reports it full
    assert pick(r, [1, 2, 3]).worker.name == "w1"
    r.workers[1].up = False
    choice = pick(r, [1, 2, 3])
    assert (choice.worker.name, choice.reason) == ("w2", "load")


def test_no_match_is_plain_least_loaded_and_a_session_still_overrides() -> None:
    r = route(1, 0, 1)
    assert r.prefix is not None
    choice = pick(r, [5, 6])
    assert (choice.worker.name, choice.reason, choice.cached_blocks) == ("w1", "load", 0)
    r.prefix.index.record(1, [5, 6])
    by_session = pick(r, [5, 6], session="conversation-7")
    assert by_session.reason == "session"


@pytest.mark.parametrize("min_blocks", [1, 3])
def test_a_match_shorter_than_min_blocks_does_not_count(min_blocks: int) -> None:
    r = route(1, 0)
    assert r.prefix is not None
    r.prefix = PrefixRouting.for_workers(
        2,
        PrefixSettings(
            block_bytes=BLOCK,
            bytes_per_token=4.0,
            cache_tokens=10_000,
            balance=0.25,
            min_blocks=min_blocks,
        ),
    )
    r.prefix.index.record(0, [1, 2])
    expected = "w0" if min_blocks <= 2 else "w1"
    assert pick(r, [1, 2, 3]).worker.name == expected
