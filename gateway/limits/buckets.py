"""The per-key limit rules behind one async Protocol: token buckets with continuous refill
(capacity = the per-minute limit) for requests and tokens, leases for concurrency, and token
budgets per calendar day and month (budget.py), charged like tokens: reserve, then reconcile.

`LocalBuckets` applies them in this process; `RedisBuckets` (redis_buckets.py, admit.lua and
settle.lua) across every replica. tests/integration/test_rules_parity.py holds both to the same
expectations.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from gateway.config.keys import Principal
from gateway.limits.budget import Periods, periods


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    refused: str  # "requests", "tokens", "concurrency", "day", "month", or "" when admitted
    retry_after: float  # seconds until the request could pass; < 0: never (too large)
    requests_left: float
    tokens_left: float
    day_charged: float = 0.0  # budget tokens charged this day / month (with this request's)
    month_charged: float = 0.0
    leases_held: float = 0.0  # concurrency leases held (with this request's)


@dataclass(frozen=True, slots=True)
class Spent:
    """What one settled request used, for the key's usage counters."""

    model: str
    prompt: int
    completion: int


# Usage counters of a key in one period: budget (charged), and per model `<model>|requests`,
# `<model>|prompt`, `<model>|completion` (the key's totals are their sums).
Counters = dict[str, int]


class Buckets(Protocol):
    async def decide(
        self, principal: Principal, cost: int, lease: str, when: Periods | None = None
    ) -> Decision:
        """Admit (taking one request, `cost` tokens, the lease `lease` and `cost` of each
        budget) or refuse."""
        ...

    async def settle(
        self,
        principal: Principal,
        delta: int,
        lease: str,
        spent: Spent | None = None,
        when: Periods | None = None,
    ) -> None:
        """Give back `delta` tokens (negative: charge them) to the tokens bucket and the budgets,
        free the lease, and count `spent` in the key's usage of the periods `when`."""
        ...

    async def usage(self, name: str, when: Periods) -> tuple[Counters, Counters]:
        """The key's counters this day and this month."""
        ...

    def batching(self) -> bool:
        """True while decisions are already waiting on one another (a batch in flight)."""
        ...

    async def aclose(self) -> None: ...


class LocalBuckets:
    """The same rules as admit.lua and settle.lua, for one process (no Redis, or Redis down)."""

    def __init__(self, share: float = 1.0) -> None:
        self._share = share  # fraction of each limit this replica may use on its own
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._leases: dict[str, set[str]] = {}
        self._counters: dict[tuple[str, str], Counters] = defaultdict(lambda: defaultdict(int))

    def batching(self) -> bool:
        return False  # decided in process, at once

    def _level(self, key: tuple[str, str], limit: float, now: float) -> float:
        value, at = self._buckets.get(key, (limit, now))
        return min(limit, value + (now - at) * limit / 60)

    async def decide(
        self, principal: Principal, cost: int, lease: str, when: Periods | None = None
    ) -> Decision:
        when = when or periods()
        now = time.monotonic()
        rpm = principal.rpm * self._share if principal.rpm else 0.0
        tpm = principal.tpm * self._share if principal.tpm else 0.0
        per_day = principal.tokens_per_day * self._share if principal.tokens_per_day else 0.0
        per_month = principal.tokens_per_month * self._share if principal.tokens_per_month else 0
        requests = self._level((principal.name, "r"), rpm, now) if rpm else 0.0
        tokens = self._level((principal.name, "t"), tpm, now) if tpm else 0.0
        day_counters = self._counters[(principal.name, "d" + when.day)]
        month_counters = self._counters[(principal.name, "m" + when.month)]
        budgeted = principal.budgeted
        day = day_counters["budget"] if budgeted else 0
        month = month_counters["budget"] if budgeted else 0
        held = self._leases.setdefault(principal.name, set())
        conc = principal.max_concurrent or 0
        refused, wait = "", 0.0
        if per_day and day + cost > per_day:
            refused, wait = "day", -1.0
        elif per_month and month + cost > per_month:
            refused, wait = "month", -1.0
        elif rpm and requests < 1:
            refused, wait = "requests", (1 - requests) * 60 / rpm
        elif tpm and cost > tpm:
            refused, wait = "tokens", -1.0
        elif tpm and tokens < cost:
            refused, wait = "tokens", (cost - tokens) * 60 / tpm
        elif conc and len(held) >= conc:
            refused, wait = "concurrency", 1.0
        if refused:
            return Decision(False, refused, wait, requests, tokens, day, month)
        if rpm:
            requests -= 1
            self._buckets[(principal.name, "r")] = (requests, now)
        if tpm:
            tokens -= cost
            self._buckets[(principal.name, "t")] = (tokens, now)
        if conc:
            held.add(lease)
        if budgeted:
            day_counters["budget"] += cost
            month_counters["budget"] += cost
            day, month = day_counters["budget"], month_counters["budget"]
        return Decision(True, "", 0.0, requests, tokens, day, month)

    async def settle(
        self,
        principal: Principal,
        delta: int,
        lease: str,
        spent: Spent | None = None,
        when: Periods | None = None,
    ) -> None:
        self._leases.get(principal.name, set()).discard(lease)
        if principal.tpm and delta:
            now = time.monotonic()
            tpm = principal.tpm * self._share
            tokens = self._level((principal.name, "t"), tpm, now)
            self._buckets[(principal.name, "t")] = (min(tpm, tokens + delta), now)
        when = when or periods()
        day = self._counters[(principal.name, "d" + when.day)]
        month = self._counters[(principal.name, "m" + when.month)]
        for counters in (day, month):
            if principal.budgeted and delta:
                counters["budget"] -= delta
            if spent is not None:
                counters[f"{spent.model}|requests"] += 1
                counters[f"{spent.model}|prompt"] += spent.prompt
                counters[f"{spent.model}|completion"] += spent.completion

    async def usage(self, name: str, when: Periods) -> tuple[Counters, Counters]:
        return (
            dict(self._counters.get((name, "d" + when.day), {})),
            dict(self._counters.get((name, "m" + when.month), {})),
        )

    async def aclose(self) -> None:
        return None
