"""vLLM's KV-cache events, read from a worker's ZMQ publisher (`--kv-events-config`): which
blocks its prefix cache stored and removed. The gateway tags each request it sends with vLLM's
`session_id` field, which vLLM echoes on the blocks that request stored, so the events say
exactly which request's prefix a worker still holds.

Only the fields the gateway needs are decoded (never the token ids' meaning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import msgspec
import orjson
import zmq
import zmq.asyncio

log = logging.getLogger("gateway.prefix")


class BlockStored(msgspec.Struct, tag=True):
    block_hashes: list[int]
    parent_block_hash: int | None = None
    session_id: str | None = None


class BlockRemoved(msgspec.Struct, tag=True):
    block_hashes: list[int]


class AllBlocksCleared(msgspec.Struct, tag=True):
    pass


Event = BlockStored | BlockRemoved | AllBlocksCleared


class EventBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[Event]
    data_parallel_rank: int | None = None


_DECODER = msgspec.msgpack.Decoder(EventBatch)


def decode_batch(payload: bytes) -> list[Event]:
    """The events of one published batch; unknown event types are an error (msgspec)."""
    return _DECODER.decode(payload).events


def zmq_endpoint(sources: bytes, worker_url: str) -> str | None:
    """The worker's publisher address from its GET /kv_event_sources answer, with a wildcard
    bind address (`tcp://*:5557`) replaced by the worker's own host; None when it publishes
    nothing."""
    try:
        doc = orjson.loads(sources)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not doc:
        return None
    config = doc[sorted(doc)[0]]  # data-parallel rank 0 (one engine per worker)
    if not isinstance(config, dict) or not config.get("enable_kv_cache_events"):
        return None
    endpoint = config.get("endpoint")
    if not isinstance(endpoint, str) or config.get("publisher") != "zmq":
        return None
    host = urlsplit(worker_url).hostname or "127.0.0.1"
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:", "tcp://[::]:"):
        if endpoint.startswith(wildcard):
            return f"tcp://{host}:{endpoint[len(wildcard) :]}"
    return endpoint


Apply = Callable[[list[Event]], None]


async def follow(endpoint: str, apply: Apply, context: zmq.asyncio.Context) -> None:
    """Receive batches from one publisher until cancelled (ZMQ reconnects on its own when the
    worker restarts); a batch that does not decode is skipped."""
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    try:
        while True:
            parts = await socket.recv_multipart()
            try:
                events = decode_batch(parts[-1])
            except msgspec.DecodeError:
                log.warning("kv events from %s: a batch did not decode; skipped", endpoint)
                continue
            apply(events)
    finally:
        socket.close()
