"""Precise mode without sockets: vLLM's KV-cache event batches decoded (msgpack, as vLLM's
publisher writes them), the publisher's address found from /kv_event_sources, and the events
applied to the prefix index: an evicted block takes the text from its depth on out of the
worker's index, a cleared cache takes everything."""

from __future__ import annotations

import msgspec
import pytest

from gateway.routing.cache_aware import PrefixRouting, PrefixSettings
from gateway.routing.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    decode_batch,
    zmq_endpoint,
)

SETTINGS = PrefixSettings(
    block_bytes=512,
    bytes_per_token=4.0,
    cache_tokens=1_000_000,
    balance=0.25,
    min_blocks=1,
    exact=True,
)


def vllm_batch(*events: dict[str, object]) -> bytes:
    """A batch as vLLM's ZMQ publisher encodes it: [ts, [events...], dp_rank], each event a
    map tagged by its class name and carrying fields the gateway ignores."""
    return msgspec.msgpack.encode([1796119889.0, list(events), 0])


def test_batches_decode_to_the_three_event_kinds_ignoring_other_fields() -> None:
    payload = vllm_batch(
        {
            "type": "BlockStored",
            "block_hashes": [11, 12],
            "parent_block_hash": None,
            "token_ids": list(range(256)),
            "block_size": 128,
            "lora_id": None,
            "medium": "GPU",
            "session_id": "gw-1",
        },
        {"type": "BlockRemoved", "block_hashes": [12], "medium": "GPU"},
        {"type": "AllBlocksCleared"},
    )
    stored, removed, cleared = decode_batch(payload)
    assert stored == BlockStored([11, 12], None, "gw-1")
    assert removed == BlockRemoved([12])
    assert isinstance(cleared, AllBlocksCleared)


def test_a_wildcard_publisher_address_is_reached_at_the_workers_host() -> None:
    sources = b'{"0":{"enable_kv_cache_events":true,"publisher":"zmq","endpoint":"tcp://*:5557"}}'
    assert zmq_endpoint(sources, "http://10.0.0.7:8000") == "tcp://10.0.0.7:5557"
    assert zmq_endpoint(b"{}", "http://10.0.0.7:8000") is None  # publishes nothing
    off = b'{"0":{"enable_kv_cache_events":false,"publisher":"null","endpoint":"tcp://*:5557"}}'
    assert zmq_endpoint(off, "http://h:1") is None
    assert zmq_endpoint(b"not json", "http://h:1") is None


def routing_with(hashes: list[int], tag: str) -> PrefixRouting:
    routing = PrefixRouting.for_workers(2, SETTINGS)
    routing.note("m", "w0", 0, hashes, tag)
    return routing


def test_an_evicted_block_takes_the_text_from_its_depth_on_out_of_the_index() -> None:
    text = list(range(100, 112))  # 12 text blocks of 512 bytes: 6 KB, 1,536 tokens at 4 B/token
    routing = routing_with(text, "gw-a")
    assert routing.exact is not None
    # vLLM stored the prompt as 12 blocks of 128 tokens (one batch, then a continuation).
    routing.events(0, [BlockStored(list(range(1, 7)), None, "gw-a")])
    routing.events(0, [BlockStored(list(range(7, 13)), 6, "gw-a")])
    assert routing.exact.size(0) == 12
    assert routing.index.match(text, 2) == [12, 0]
    routing.events(0, [BlockRemoved([12])])  # the tail: depth 11
    assert routing.index.match(text, 2) == [11, 0]
    routing.events(0, [BlockRemoved([9, 10, 11])])  # depths 8 to 10
    assert routing.index.match(text, 2) == [8, 0]


def test_a_cleared_cache_empties_the_workers_index_and_unknown_chains_are_ignored() -> None:
    text = list(range(100, 108))
    routing = routing_with(text, "gw-b")
    assert routing.exact is not None
    routing.events(0, [BlockStored([5, 6], 999, "gw-b")])  # its parent came before we listened
    assert routing.exact.size(0) == 0
    routing.events(0, [BlockRemoved([5])])  # nothing known of it: the index keeps its guess
    assert routing.index.match(text, 2) == [8, 0]
    routing.events(0, [AllBlocksCleared()])
    assert routing.index.match(text, 2) == [0, 0]


@pytest.mark.parametrize(("bytes_per_token", "left"), [(4.0, 4), (2.0, 2)])
def test_the_text_an_eviction_takes_follows_the_learned_bytes_per_token(
    bytes_per_token: float, left: int
) -> None:
    text = list(range(100, 116))
    routing = routing_with(text, "gw-c")
    routing.bytes_per_token = bytes_per_token
    routing.events(0, [BlockStored(list(range(1, 17)), None, "gw-c")])
    routing.events(0, [BlockRemoved([5])])  # depth 4: tokens from 512 on
    assert routing.index.match(text, 2) == [left, 0]


def test_learning_moves_the_ratio_towards_what_vllm_reports() -> None:
    routing = PrefixRouting.for_workers(2, SETTINGS)
    for _ in range(100):
        routing.learn(prompt_blocks=20, prompt_tokens=5120)  # 10 KB in 5,120 tokens: 2 B/token
    assert routing.bytes_per_token == pytest.approx(2.0, rel=0.05)
    routing.learn(prompt_blocks=2, prompt_tokens=1)  # too short to say anything
    assert routing.bytes_per_token == pytest.approx(2.0, rel=0.05)
