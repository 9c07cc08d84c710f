"""An approximate index of what each worker's vLLM prefix cache holds, without a tokenizer.

A request's prompt is cut into blocks of `block_bytes` of a canonical text (chat: each message's
role and content, in order; completions: the prompt) and each block is hashed together with
everything before it (a chained CRC-32), so two requests sharing a prefix share their leading
block hashes. The index remembers which worker each block was sent to, least recently used
first out, bounded per worker by an estimate of that worker's KV cache; a request's expected
cache hit on a worker is the number of its leading blocks that worker holds.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.request import Endpoint, RequestView

_ROLE_END = b"\x1f"  # separators that JSON strings cannot hold unescaped after encoding
_MESSAGE_END = b"\x1e"


def canonical_prompt(view: RequestView) -> bytes:
    """The prompt as bytes that depend only on what reaches the model's prefix: for chat each
    message's role and content in order (key order and JSON whitespace do not matter)."""
    doc = view.doc
    if view.endpoint is Endpoint.CHAT:
        parts: list[bytes] = []
        for message in doc["messages"]:
            parts += (str(message["role"]).encode(), _ROLE_END)
            parts += (_content_bytes(message.get("content")), _MESSAGE_END)
        return b"".join(parts)
    return _content_bytes(doc.get("prompt"))


def _content_bytes(content: Any) -> bytes:
    if isinstance(content, str):
        return content.encode()
    if content is None:
        return b""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content).encode()
    return orjson.dumps(content, option=orjson.OPT_SORT_KEYS)  # images, token ids, ...


def block_hashes(prompt: bytes, block_bytes: int) -> list[int]:
    """Chained hashes of the prompt's whole blocks (a partial last block is never cached)."""
    hashes = []
    view = memoryview(prompt)
    running = 0
    for end in range(block_bytes, len(prompt) + 1, block_bytes):
        running = zlib.crc32(view[end - block_bytes : end], running)
        hashes.append(running)
    return hashes


class PrefixIndex:
    """Block hash -> the workers (bit per worker slot) that were sent it, each worker's blocks
    kept in LRU order and bounded by its capacity in blocks."""

    def __init__(self, slots: int, capacity: int) -> None:
        self._holders: dict[int, int] = {}
        self._lru: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(slots)]
        self._capacity = [capacity] * slots

    def grow(self, slots: int) -> None:
        """Room for workers in slots up to `slots` - 1 (a reload added some)."""
        while len(self._lru) < slots:
            self._lru.append(OrderedDict())
            self._capacity.append(self._capacity[-1] if self._capacity else 1)

    def set_capacity(self, slot: int, blocks: int) -> None:
        self._capacity[slot] = max(blocks, 1)
        self._evict(slot)

    def size(self, slot: int) -> int:
        return len(self._lru[slot])

    def match(self, hashes: Sequence[int], slots: int) -> list[int]:
        """For each of the first `slots` workers, how many leading blocks of `hashes` it holds."""
        lengths = [0] * slots
        alive = (1 << slots) - 1
        holders = self._holders
        for depth, block in enumerate(hashes):
            held = holders.get(block, 0) & alive
            if held != alive:
                dropped = alive & ~held
                while dropped:
                    low = dropped & -dropped
                    lengths[low.bit_length() - 1] = depth
                    dropped ^= low
                alive = held
                if not alive:
                    return lengths
        while alive:
            low = alive & -alive
            lengths[low.bit_length() - 1] = len(hashes)
            alive ^= low
        return lengths

    def record(self, slot: int, hashes: Sequence[int]) -> None:
        """The worker in `slot` was sent these blocks: it holds them now (most recent).

        Recorded last block first, so the prompt's first block is the most recent of all: under
        pressure a chain loses its tail first, as vLLM's cache does (a lost head would leave
        the rest unmatchable)."""
        bit = 1 << slot
        lru = self._lru[slot]
        holders = self._holders
        for block in reversed(hashes):
            if block in lru:
                lru.move_to_end(block)
            else:
                lru[block] = None
                holders[block] = holders.get(block, 0) | bit
        self._evict(slot)

    def drop(self, slot: int, hashes: Sequence[int]) -> None:
        """The worker no longer holds these blocks (its cache evicted them)."""
        lru = self._lru[slot]
        for block in hashes:
            if block in lru:
                del lru[block]
                self._drop(slot, block)

    def forget(self, slot: int) -> None:
        """The worker lost its cache (restarted, removed)."""
        lru = self._lru[slot]
        while lru:
            self._drop(slot, lru.popitem(last=False)[0])

    def _evict(self, slot: int) -> None:
        lru = self._lru[slot]
        capacity = self._capacity[slot]
        while len(lru) > capacity:
            self._drop(slot, lru.popitem(last=False)[0])

    def _drop(self, slot: int, block: int) -> None:
        left = self._holders.get(block, 0) & ~(1 << slot)
        if left:
            self._holders[block] = left
        else:
            self._holders.pop(block, None)
