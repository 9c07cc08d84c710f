"""The per-key limit rules behind one async Protocol: token buckets with continuous refill
(capacity = the per-minute limit) for requests and tokens, and leases for concurrency.

`LocalBuckets` applies them in this process; `RedisBuckets` (redis_buckets.py, admit.lua and
settle.lua) across every replica. tests/integration/test_rules_parity.py holds both to the same
expectations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from gateway.config.keys import Principal


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    refused: str  # "requests", "tokens", "concurrency", or "" when admitted
    retry_after: float  # seconds until the request could pass; < 0: never (too large)
    requests_left: float
    tokens_left: float


class Buckets(Protocol):
    async def decide(self, principal: Principal, cost: int, lease: str) -> Decision:
        """Admit (taking one request, `cost` tokens and the lease `lease`) or refuse."""
        ...

    async def settle(self, principal: Principal, delta: int, lease: str) -> None:
        """Give back `delta` tokens (negative: charge them) and free the lease."""
        ...

    async def aclose(self) -> None: ...


class LocalBuckets:
    """The same rules as admit.lua and settle.lua, for one process (no Redis, or Redis down)."""

    def __init__(self, share: float = 1.0) -> None:
        self._share = share  # fraction of each limit this replica may use on its own
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._leases: dict[str, set[str]] = {}

    def _level(self, key: tuple[str, str], limit: float, now: float) -> float:
        value, at = self._buckets.get(key, (limit, now))
        return min(limit, value + (now - at) * limit / 60)

    async def decide(self, principal: Principal, cost: int, lease: str) -> Decision:
        now = time.monotonic()
        rpm = principal.rpm * self._share if principal.rpm else 0.0
        tpm = principal.tpm * self._share if principal.tpm else 0.0
        requests = self._level((principal.name, "r"), rpm, now) if rpm else 0.0
        tokens = self._level((principal.name, "t"), tpm, now) if tpm else 0.0
        held = self._leases.setdefault(principal.name, set())
        conc = principal.max_concurrent or 0
        refused, wait = "", 0.0
        if rpm and requests < 1:
            refused, wait = "requests", (1 - requests) * 60 / rpm
        elif tpm and cost > tpm:
            refused, wait = "tokens", -1.0
        elif tpm and tokens < cost:
            refused, wait = "tokens", (cost - tokens) * 60 / tpm
        elif conc and len(held) >= conc:
            refused, wait = "concurrency", 1.0
        if refused:
            return Decision(False, refused, wait, requests, tokens)
        if rpm:
            requests -= 1
            self._buckets[(principal.name, "r")] = (requests, now)
        if tpm:
            tokens -= cost
            self._buckets[(principal.name, "t")] = (tokens, now)
        if conc:
            held.add(lease)
        return Decision(True, "", 0.0, requests, tokens)

    async def settle(self, principal: Principal, delta: int, lease: str) -> None:
        self._leases.get(principal.name, set()).discard(lease)
        if principal.tpm and delta:
            now = time.monotonic()
            tpm = principal.tpm * self._share
            tokens = self._level((principal.name, "t"), tpm, now)
            self._buckets[(principal.name, "t")] = (min(tpm, tokens + delta), now)

    async def aclose(self) -> None:
        return None
