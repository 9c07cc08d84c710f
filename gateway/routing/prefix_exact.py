"""Precise mode of cache-aware routing: what each worker's prefix cache really holds, from its
KV-cache events, applied to the approximate index.

Each request the gateway sends carries a tag (vLLM's `session_id`) that vLLM puts on the blocks
the request stored. A stored block's depth in its chain says which tokens it holds; with the
model's bytes per token, which of the tagged request's text blocks those are. When vLLM removes
a block, the text blocks from that depth on leave the worker's index; when it clears its cache,
the worker's whole index goes. What was sent but never stored, or was evicted, no longer counts
as cached: the index holds what the worker holds, not what it was sent.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from gateway.routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, Event
from gateway.routing.prefix import PrefixIndex

_MAX_TAGS = 50_000  # requests whose text blocks are remembered (the oldest go first)


class ExactHoldings:
    """Per model: vLLM block -> (request tag, depth) per worker, and tag -> text blocks."""

    def __init__(self, index: PrefixIndex, slots: int, vllm_block_tokens: int = 128) -> None:
        self._index = index
        self._blocks: list[dict[int, tuple[str | None, int]]] = [{} for _ in range(slots)]
        self._tags: OrderedDict[str, Sequence[int]] = OrderedDict()
        self._vllm_block = vllm_block_tokens
        self.stored = self.removed = 0  # events applied (for /ready and tests)

    def tagged(self, tag: str, hashes: Sequence[int]) -> None:
        """A request with this tag and these text blocks was sent (here or by a replica)."""
        self._tags[tag] = hashes
        self._tags.move_to_end(tag)
        while len(self._tags) > _MAX_TAGS:
            self._tags.popitem(last=False)

    def apply(
        self, slot: int, events: list[Event], block_bytes: int, bytes_per_token: float
    ) -> None:
        blocks = self._blocks[slot]
        for event in events:
            if isinstance(event, BlockStored):
                self._stored(blocks, event)
            elif isinstance(event, BlockRemoved):
                for block in event.block_hashes:
                    self._removed(slot, blocks.pop(block, None), block_bytes, bytes_per_token)
            elif isinstance(event, AllBlocksCleared):
                blocks.clear()
                self._index.forget(slot)

    def grow(self, slots: int) -> None:
        while len(self._blocks) < slots:
            self._blocks.append({})

    def forget(self, slot: int) -> None:
        """The worker restarted: nothing of what it held is left."""
        self._blocks[slot].clear()

    def size(self, slot: int) -> int:
        return len(self._blocks[slot])

    def _stored(self, blocks: dict[int, tuple[str | None, int]], event: BlockStored) -> None:
        parent = event.parent_block_hash
        if parent is None:
            depth = 0
        elif parent in blocks:
            depth = blocks[parent][1] + 1
        else:
            return  # a chain that began before the gateway listened: its depth is unknown
        for block in event.block_hashes:
            blocks[block] = (event.session_id, depth)
            depth += 1
        self.stored += len(event.block_hashes)

    def _removed(
        self,
        slot: int,
        held: tuple[str | None, int] | None,
        block_bytes: int,
        bytes_per_token: float,
    ) -> None:
        self.removed += 1
        if held is None or held[0] is None:
            return
        hashes = self._tags.get(held[0])
        if hashes is None:
            return
        # The removed block held tokens from depth x block size on: the text from there is gone.
        first = int(held[1] * self._vllm_block * bytes_per_token) // block_bytes
        if first < len(hashes):
            self._index.drop(slot, hashes[first:])
