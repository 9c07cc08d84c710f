"""Per-key limits: requests/min, tokens/min (reserve, then reconcile), concurrent requests and
token budgets per UTC day and month (reserved and reconciled like tokens/min); and each key's
usage counters, which settle() adds to.

Redis holds the state every replica shares; without Redis, or while it is down and the gateway
fails open, the local buckets apply the same rules in this process (buckets.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from gateway.config.keys import Principal
from gateway.errors import InsufficientQuota, LimiterUnavailable, RateLimited
from gateway.limits.buckets import Buckets, Counters, Decision, Spent
from gateway.limits.budget import Periods, periods, reset_text
from gateway.limits.headroom import Headroom
from gateway.observe.metrics import Metrics

log = logging.getLogger("gateway.limits.limiter")
_WHAT = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "concurrent requests",
}
_PERIOD = {"day": "today", "month": "this month"}


@dataclass(slots=True)
class Reservation:
    """An admitted request's claim: tokens reserved, and its concurrency lease."""

    principal: Principal
    reserved: int
    lease: str
    local: bool  # decided by the local buckets (settled there too)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # x-ratelimit-*
    when: Periods | None = None  # the day and month its budget tokens were charged to
    decided: bool = True  # False: a key without limits (only its usage is counted)


def _duration(seconds: float) -> str:
    """OpenAI's reset format: 20ms, 6s, 1m30s."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


def ratelimit_headers(principal: Principal, decision: Decision) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[bytes, bytes]] = []
    for kind, limit, left in (
        ("requests", principal.rpm, decision.requests_left),
        ("tokens", principal.tpm, decision.tokens_left),
    ):
        if limit is None:
            continue
        remaining = max(0, int(left))
        reset = (limit - max(left, -10 * limit)) * 60 / limit
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), _duration(reset).encode()),
        ]
    if principal.budgeted:
        when = periods()
        now = time.time()
        for period, budget, charged, resets in (
            ("day", principal.tokens_per_day, decision.day_charged, when.day_reset),
            ("month", principal.tokens_per_month, decision.month_charged, when.month_reset),
        ):
            if budget is None:
                continue
            headers += [
                (f"x-ratelimit-limit-tokens-{period}".encode(), str(budget).encode()),
                (
                    f"x-ratelimit-remaining-tokens-{period}".encode(),
                    str(max(0, int(budget - charged))).encode(),
                ),
                (f"x-ratelimit-reset-tokens-{period}".encode(), _duration(resets - now).encode()),
            ]
    return headers


def over_budget(principal: Principal, decision: Decision, cost: int) -> InsufficientQuota:
    """429 insufficient_quota: which budget, how much is left, and when it resets."""
    headers = {k.decode(): v.decode() for k, v in ratelimit_headers(principal, decision)}
    when = periods()
    if decision.refused == "day":
        budget, charged, resets = principal.tokens_per_day, decision.day_charged, when.day_reset
    else:
        budget, charged = principal.tokens_per_month, decision.month_charged
        resets = when.month_reset
    assert budget is not None
    left = max(0, int(budget - charged))
    until = resets - time.time()
    period = _PERIOD[decision.refused]
    if cost > budget:
        message = (
            f"Request too large for the token budget of key '{principal.name}': it may need "
            f"{cost} tokens, more than the budget of {budget} tokens per {decision.refused}. "
            "Lower max_tokens or the prompt."
        )
    else:
        message = (
            f"Token budget of key '{principal.name}' exhausted for {period}: {left} of "
            f"{budget} tokens left, this request may need {cost}. The budget resets at "
            f"{reset_text(resets)} (UTC, in {_duration(until)})."
        )
    headers["retry-after"] = str(max(1, math.ceil(until)))
    return InsufficientQuota(message, param=f"tokens_per_{decision.refused}", headers=headers)


def refusal(principal: Principal, decision: Decision) -> RateLimited:
    headers = {k.decode(): v.decode() for k, v in ratelimit_headers(principal, decision)}
    what = _WHAT[decision.refused]
    if decision.retry_after < 0:
        message = (
            f"Request too large for key '{principal.name}': it may need more tokens than "
            f"its limit of {principal.tpm} {what}. Lower max_tokens or the prompt."
        )
        headers["retry-after"] = "60"
    else:
        message = f"Rate limit reached for key '{principal.name}' on {what}."
        headers["retry-after"] = str(max(1, math.ceil(decision.retry_after)))
    return RateLimited(message, param=decision.refused, headers=headers)


class Limiter:
    """Admit or refuse, shared buckets first; on Redis trouble fail open (local buckets) or
    closed (503).

    After a Redis error the limiter stays local for `retry_interval` seconds, so an outage costs
    one timeout per interval, not one per request; the next call after that tries Redis again.
    """

    def __init__(
        self,
        shared: Buckets | None,
        local: Buckets,
        metrics: Metrics,
        *,
        fail_open: bool,
        retry_interval: float = 1.0,
        count_usage: bool = True,
        headroom: Headroom | None = None,
    ) -> None:
        self._shared = shared
        self._local = local
        self._metrics = metrics
        self._fail_open = fail_open
        self._retry_interval = retry_interval
        self._down_until = 0.0
        self._incident = False
        self._count_usage = count_usage
        self._headroom = headroom if shared is not None else None  # only Redis keeps one waiting

    def early(self, principal: Principal, cost: int) -> bool:
        """True: the request may go to its worker while its admit is in flight (headroom.py);
        then admit it with `early=True`. Only while the limiter's link to Redis is idle: under
        load, decisions already share round trips, the process's CPU is what requests wait
        for, and a second task per request would cost more than the wait it hides (measured:
        +8 to +33 % CPU per request at c=64 in two runs, bench/RESULTS.md)."""
        headroom = self._headroom
        if headroom is None or not principal.limited or time.monotonic() < self._down_until:
            return False
        assert self._shared is not None
        return not self._shared.batching() and headroom.take(principal, cost)

    async def admit(self, principal: Principal, cost: int, *, early: bool = False) -> Reservation:
        if not early:
            early_out = self._headroom.early_out(principal.name) if self._headroom else None
            if early_out is not None:  # the key's early admits are decided first
                await asyncio.shield(early_out)
            return await self._admit(principal, cost)
        assert self._headroom is not None
        try:
            return await self._admit(principal, cost)
        finally:
            self._headroom.done(principal, cost)

    async def _admit(self, principal: Principal, cost: int) -> Reservation:
        when = periods()
        if not principal.limited:  # nothing to decide: only its usage will be counted
            return Reservation(principal, 0, "", self._shared is None, when=when, decided=False)
        lease = os.urandom(8).hex()
        decision, local = await self._decide(principal, cost, lease, when)
        if not decision.admitted:
            self._metrics.ratelimit_rejections.labels(principal.name, decision.refused).inc()
            if decision.refused in _PERIOD:
                raise over_budget(principal, decision, cost)
            raise refusal(principal, decision)
        if principal.budgeted:
            ratio = self._metrics.key_budget_used
            if principal.tokens_per_day:
                ratio.labels(principal.name, "day").set(
                    decision.day_charged / principal.tokens_per_day
                )
            if principal.tokens_per_month:
                ratio.labels(principal.name, "month").set(
                    decision.month_charged / principal.tokens_per_month
                )
        headers = ratelimit_headers(principal, decision)
        return Reservation(principal, cost, lease, local, headers, when)

    async def _decide(
        self, principal: Principal, cost: int, lease: str, when: Periods
    ) -> tuple[Decision, bool]:
        if self._shared is not None and time.monotonic() >= self._down_until:
            try:
                decision = await self._shared.decide(principal, cost, lease, when)
            except (TimeoutError, RedisError, OSError) as exc:
                self._trouble(exc)
            else:
                self._recovered()
                if self._headroom is not None:
                    self._headroom.saw(principal.name, decision)
                return decision, False
        if self._shared is not None:
            self._metrics.ratelimit_local_decisions.inc()
            if not self._fail_open:
                raise LimiterUnavailable(
                    "Rate limits cannot be checked right now; retry shortly.",
                    headers={"retry-after": "1"},
                )
        return await self._local.decide(principal, cost, lease, when), True

    async def settle(
        self,
        reservation: Reservation,
        used: int | None,
        model: str | None = None,
        prompt: int = 0,
        completion: int = 0,
    ) -> None:
        """Refund or charge the reservation against what the worker reported; free the lease;
        count the request and its tokens in the key's usage (`model`: it reached one)."""
        principal = reservation.principal
        delta = 0
        if used is None:
            if principal.tpm is not None or principal.budgeted:
                self._metrics.usage_missing.inc()
        else:
            self._metrics.of(self._metrics.key_tokens, principal.name).inc(used)
            if reservation.decided:
                delta = reservation.reserved - used
        spent = Spent(model, prompt, completion) if model and self._count_usage else None
        if spent is None and delta == 0 and principal.max_concurrent is None:
            return  # nothing to give back or count (e.g. a key with rpm only)
        local = reservation.local or (
            not reservation.decided and time.monotonic() < self._down_until
        )  # a key without limits counts its usage here while Redis is away
        buckets = self._local if local else self._shared
        assert buckets is not None
        try:
            await buckets.settle(principal, delta, reservation.lease, spent, reservation.when)
        except (TimeoutError, RedisError, OSError) as exc:
            self._trouble(exc)  # the lease expires on its own; the refund is lost

    async def usage(self, principal: Principal) -> tuple[Periods, Counters, Counters]:
        """The key's usage this day and month (Redis: every replica's; else this process's)."""
        when = periods()
        if self._shared is not None:
            try:
                return (when, *await self._shared.usage(principal.name, when))
            except (TimeoutError, RedisError, OSError) as exc:
                self._trouble(exc)
                raise LimiterUnavailable(
                    "Usage cannot be read right now; retry shortly.",
                    headers={"retry-after": "1"},
                ) from None
        return (when, *await self._local.usage(principal.name, when))

    def _trouble(self, exc: BaseException) -> None:
        self._metrics.redis_errors.inc()
        if self._headroom is not None:
            self._headroom.forget()
        self._down_until = time.monotonic() + self._retry_interval
        if not self._incident:
            self._incident = True
            self._metrics.ratelimit_degraded.set(1)
            mode = "serving under local limits" if self._fail_open else "refusing requests (503)"
            log.error("Redis unavailable (%s); %s until it is back", type(exc).__name__, mode)

    def _recovered(self) -> None:
        self._down_until = 0.0  # a call begun before an error may succeed after it
        if self._incident:
            self._incident = False
            self._metrics.ratelimit_degraded.set(0)
            log.warning("Redis is back: limits are shared again")

    async def aclose(self) -> None:
        if self._shared is not None:
            await self._shared.aclose()
        await self._local.aclose()
