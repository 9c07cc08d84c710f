"""Per-key limits: requests/min, tokens/min (reserve, then reconcile) and concurrent requests.

Redis holds the state every replica shares; without Redis, or while it is down and the gateway
fails open, the local buckets apply the same rules in this process (buckets.py).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from gateway.config.keys import Principal
from gateway.errors import LimiterUnavailable, RateLimited
from gateway.limits.buckets import Buckets, Decision
from gateway.observe.metrics import Metrics

log = logging.getLogger("gateway.limits.limiter")
_WHAT = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "concurrent requests",
}


@dataclass(slots=True)
class Reservation:
    """An admitted request's claim: tokens reserved, and its concurrency lease."""

    principal: Principal
    reserved: int
    lease: str
    local: bool  # decided by the local buckets (settled there too)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # x-ratelimit-*


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
    return headers


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
    ) -> None:
        self._shared = shared
        self._local = local
        self._metrics = metrics
        self._fail_open = fail_open
        self._retry_interval = retry_interval
        self._down_until = 0.0
        self._incident = False

    async def admit(self, principal: Principal, cost: int) -> Reservation:
        lease = os.urandom(8).hex()
        decision, local = await self._decide(principal, cost, lease)
        if not decision.admitted:
            self._metrics.ratelimit_rejections.labels(principal.name, decision.refused).inc()
            raise refusal(principal, decision)
        return Reservation(principal, cost, lease, local, ratelimit_headers(principal, decision))

    async def _decide(self, principal: Principal, cost: int, lease: str) -> tuple[Decision, bool]:
        if self._shared is not None and time.monotonic() >= self._down_until:
            try:
                decision = await self._shared.decide(principal, cost, lease)
            except (TimeoutError, RedisError, OSError) as exc:
                self._trouble(exc)
            else:
                self._recovered()
                return decision, False
        if self._shared is not None:
            self._metrics.ratelimit_local_decisions.inc()
            if not self._fail_open:
                raise LimiterUnavailable(
                    "Rate limits cannot be checked right now; retry shortly.",
                    headers={"retry-after": "1"},
                )
        return await self._local.decide(principal, cost, lease), True

    async def settle(self, reservation: Reservation, used: int | None) -> None:
        """Refund or charge the reservation against what the worker reported; free the lease."""
        principal = reservation.principal
        delta = 0
        if principal.tpm is not None:  # only then is usage asked for and read
            if used is None:
                self._metrics.usage_missing.inc()
            else:
                self._metrics.key_tokens.labels(principal.name).inc(used)
                delta = reservation.reserved - used
        if reservation.local:
            await self._local.settle(principal, delta, reservation.lease)
            return
        if delta == 0 and principal.max_concurrent is None:
            return  # nothing to give back: no Redis round trip (e.g. a key with rpm only)
        assert self._shared is not None
        try:
            await self._shared.settle(principal, delta, reservation.lease)
        except (TimeoutError, RedisError, OSError) as exc:
            self._trouble(exc)  # the lease expires on its own; the refund is lost

    def _trouble(self, exc: BaseException) -> None:
        self._metrics.redis_errors.inc()
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
