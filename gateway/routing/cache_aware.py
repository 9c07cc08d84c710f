"""Cache-aware routing of one model: the prefix index, the settings that weigh it against load,
the bytes-per-token ratio learned from vLLM's usage (which sizes each worker's cache in blocks),
sharing with the other replicas, and, in precise mode, the workers' own KV-cache events.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway.request import RequestView
from gateway.routing.kv_events import Event
from gateway.routing.prefix import PrefixIndex, block_hashes, canonical_prompt
from gateway.routing.prefix_exact import ExactHoldings

# Publishes a local routing decision to the other gateway replicas:
# (model, worker, the prompt's block hashes, the request's tag or None).
Share = Callable[[str, str, Sequence[int], str | None], None]
_LEARN_WEIGHT = 0.05  # weight of one request in the running bytes-per-token average
_LEARN_MIN_BLOCKS = 4  # prompts shorter than this say too little about the ratio
_RATIO_RANGE = (1.0, 8.0)  # bytes per token any tokenizer lands in: a stray report can't skew it


@dataclass(frozen=True, slots=True)
class PrefixSettings:
    block_bytes: int  # canonical prompt bytes per block (~ vLLM's 128-token block)
    bytes_per_token: float  # the ratio to start from; learned from vLLM's usage afterwards
    cache_tokens: int  # a worker's KV cache when its /metrics does not say
    balance: float  # load difference beyond which the least loaded wins over the cache
    min_blocks: int  # leading blocks a worker must hold to be chosen for its cache
    exact: bool = False  # precise mode: follow the workers' KV-cache events


@dataclass(eq=False, slots=True)
class PrefixRouting:
    index: PrefixIndex
    settings: PrefixSettings
    slots: int
    share: Share | None = None
    exact: ExactHoldings | None = None
    bytes_per_token: float = 4.0
    _cache_tokens: list[int] = field(default_factory=list)

    @classmethod
    def for_workers(cls, slots: int, settings: PrefixSettings) -> PrefixRouting:
        index = PrefixIndex(slots, 1)
        routing = cls(index, settings, slots, bytes_per_token=settings.bytes_per_token)
        routing._cache_tokens = [settings.cache_tokens] * slots
        if settings.exact:
            routing.exact = ExactHoldings(index, slots)
        routing._resize()
        return routing

    @property
    def balance(self) -> float:
        return self.settings.balance

    @property
    def min_blocks(self) -> int:
        return self.settings.min_blocks

    def hashes(self, view: RequestView) -> list[int]:
        return block_hashes(canonical_prompt(view), self.settings.block_bytes)

    def note(
        self, model: str, worker: str, slot: int, hashes: Sequence[int], tag: str | None = None
    ) -> None:
        """This replica sent these blocks to the worker: remember it, and tell the others."""
        self.index.record(slot, hashes)
        if tag is not None and self.exact is not None:
            self.exact.tagged(tag, hashes)
        if self.share is not None:
            self.share(model, worker, hashes, tag)

    def noted_elsewhere(self, slot: int, hashes: Sequence[int], tag: str | None) -> None:
        """Another replica sent these blocks to the worker."""
        self.index.record(slot, hashes)
        if tag is not None and self.exact is not None:
            self.exact.tagged(tag, hashes)

    def cache_tokens(self, slot: int, tokens: int) -> None:
        """The worker's KV cache holds `tokens` (vLLM's cache_config_info)."""
        if self._cache_tokens[slot] != tokens:
            self._cache_tokens[slot] = tokens
            self._resize()

    def learn(self, prompt_blocks: int, prompt_tokens: int) -> None:
        """A prompt of this many blocks was this many tokens (vLLM's usage)."""
        if prompt_blocks < _LEARN_MIN_BLOCKS or prompt_tokens <= 0:
            return
        low, high = _RATIO_RANGE
        seen = min(max(prompt_blocks * self.settings.block_bytes / prompt_tokens, low), high)
        before = self.bytes_per_token
        self.bytes_per_token += _LEARN_WEIGHT * (seen - before)
        if abs(self.bytes_per_token - before) > 0.05 * before:
            self._resize()

    def events(self, slot: int, events: list[Event]) -> None:
        """KV-cache events of the worker in `slot` (precise mode)."""
        if self.exact is not None:
            self.exact.apply(slot, events, self.settings.block_bytes, self.bytes_per_token)

    def grow(self, slots: int) -> None:
        """Room for workers in slots up to `slots` - 1 (a reload added some)."""
        if slots <= self.slots:
            return
        self.index.grow(slots)
        if self.exact is not None:
            self.exact.grow(slots)
        self._cache_tokens += [self.settings.cache_tokens] * (slots - self.slots)
        self.slots = slots
        self._resize()

    def forget(self, slot: int) -> None:
        """The worker restarted, or left: its cache is empty."""
        self.index.forget(slot)
        if self.exact is not None:
            self.exact.forget(slot)

    def _resize(self) -> None:
        # Precise mode evicts by the worker's own events; the size bound is only a backstop.
        spare = 2.0 if self.exact is not None else 1.0
        for slot, tokens in enumerate(self._cache_tokens):
            blocks = int(tokens * self.bytes_per_token * spare) // self.settings.block_bytes
            self.index.set_capacity(slot, blocks)
