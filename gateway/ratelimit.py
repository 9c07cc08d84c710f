"""Per-key limits: requests/min, tokens/min (reserve, then reconcile) and concurrent requests.

Redis holds the state every replica shares (one Lua script per decision, limits.lua); without
Redis, or while it is down and the gateway fails open, LocalBuckets applies the same rules in
this process. Algorithm: token buckets with continuous refill, capacity = the per-minute limit.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.errors import LimiterUnavailable, RateLimited
from gateway.keys import Principal
from gateway.metrics import Metrics
from gateway.redis_batch import ScriptBatcher

log = logging.getLogger("gateway.ratelimit")
_SCRIPTS = Path(__file__).parent
_WHAT = {
    "requests": "requests per minute",
    "tokens": "tokens per minute",
    "concurrency": "concurrent requests",
}


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    refused: str  # "requests", "tokens", "concurrency", or "" when admitted
    retry_after: float  # seconds until the request could pass; < 0: never (too large)
    requests_left: float
    tokens_left: float


@dataclass(slots=True)
class Admission:
    """An admitted request's claim: tokens reserved, and its concurrency lease."""

    principal: Principal
    reserved: int
    lease: str
    local: bool
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


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


class LocalBuckets:
    """The same rules as limits.lua, for one process (no Redis, or Redis down)."""

    def __init__(self, share: float = 1.0) -> None:
        self._share = share  # fraction of each limit this replica may use on its own
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}
        self._leases: dict[str, set[str]] = {}

    def _level(self, key: tuple[str, str], limit: float, now: float) -> float:
        value, at = self._buckets.get(key, (limit, now))
        return min(limit, value + (now - at) * limit / 60)

    def decide(self, principal: Principal, cost: int, lease: str) -> Decision:
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

    def settle(self, principal: Principal, delta: int, lease: str) -> None:
        self._leases.get(principal.name, set()).discard(lease)
        if principal.tpm and delta:
            now = time.monotonic()
            tpm = principal.tpm * self._share
            tokens = self._level((principal.name, "t"), tpm, now)
            self._buckets[(principal.name, "t")] = (min(tpm, tokens + delta), now)


class RedisBuckets:
    """limits.lua and settle.lua, through one pooled redis-py client with tight timeouts."""

    def __init__(self, url: str, timeout: float, lease_ttl: float) -> None:
        # One immediate retry on a connection error: after a Redis restart every pooled
        # connection fails its first command although Redis is up. Timeouts are not retried.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_error=[RedisConnectionError],
            health_check_interval=0,
        )
        self._lease_ttl = lease_ttl
        self._admit = self._redis.register_script((_SCRIPTS / "limits.lua").read_text())
        self._settle = self._redis.register_script((_SCRIPTS / "settle.lua").read_text())
        self._batch = ScriptBatcher(self._redis)

    @staticmethod
    def _keys(principal: Principal) -> list[str]:
        tag = "{" + principal.name + "}"  # one hash tag: one cluster slot for all three
        return [f"gw:{tag}:rpm", f"gw:{tag}:tpm", f"gw:{tag}:leases"]

    async def decide(self, principal: Principal, cost: int, lease: str) -> Decision:
        reply = await self._batch.call(
            self._admit,
            self._keys(principal),
            [
                principal.rpm or 0,
                principal.tpm or 0,
                principal.max_concurrent or 0,
                cost,
                lease,
                self._lease_ttl,
            ],
        )
        admitted, refused, wait, requests, tokens, _ = (
            v.decode() if isinstance(v, bytes) else str(v) for v in reply
        )
        return Decision(admitted == "1", refused, float(wait), float(requests), float(tokens))

    async def settle(self, principal: Principal, delta: int, lease: str) -> None:
        keys = self._keys(principal)
        await self._batch.call(self._settle, [keys[1], keys[2]], [principal.tpm or 0, delta, lease])

    async def aclose(self) -> None:
        await self._redis.aclose()


class Limiter:
    """Admit or refuse, Redis first; on Redis trouble fail open (local buckets) or closed (503).

    After a Redis error the limiter stays local for `retry_interval` seconds, so an outage costs
    one timeout per interval, not one per request; the next call after that tries Redis again.
    """

    def __init__(
        self,
        redis: RedisBuckets | None,
        local: LocalBuckets,
        metrics: Metrics,
        *,
        fail_open: bool,
        retry_interval: float = 1.0,
    ) -> None:
        self._redis = redis
        self._local = local
        self._metrics = metrics
        self._fail_open = fail_open
        self._retry_interval = retry_interval
        self._down_until = 0.0
        self._incident = False

    async def admit(self, principal: Principal, cost: int) -> Admission:
        lease = os.urandom(8).hex()
        decision, local = await self._decide(principal, cost, lease)
        if not decision.admitted:
            self._metrics.ratelimit_rejections.labels(principal.name, decision.refused).inc()
            raise refusal(principal, decision)
        return Admission(principal, cost, lease, local, ratelimit_headers(principal, decision))

    async def _decide(self, principal: Principal, cost: int, lease: str) -> tuple[Decision, bool]:
        if self._redis is not None and time.monotonic() >= self._down_until:
            try:
                decision = await self._redis.decide(principal, cost, lease)
            except (TimeoutError, RedisError, OSError) as exc:
                self._trouble(exc)
            else:
                self._recovered()
                return decision, False
        if self._redis is not None:
            self._metrics.ratelimit_local_decisions.inc()
            if not self._fail_open:
                raise LimiterUnavailable(
                    "Rate limits cannot be checked right now; retry shortly.",
                    headers={"retry-after": "1"},
                )
        return self._local.decide(principal, cost, lease), True

    async def settle(self, admission: Admission, used: int | None) -> None:
        """Refund or charge the reservation against what the worker reported; free the lease."""
        principal = admission.principal
        delta = 0
        if principal.tpm is not None:  # only then is usage asked for and read
            if used is None:
                self._metrics.usage_missing.inc()
            else:
                self._metrics.key_tokens.labels(principal.name).inc(used)
                delta = admission.reserved - used
        if admission.local:
            self._local.settle(principal, delta, admission.lease)
            return
        if delta == 0 and principal.max_concurrent is None:
            return  # nothing to give back: no Redis round trip (e.g. a key with rpm only)
        assert self._redis is not None
        try:
            await self._redis.settle(admission.principal, delta, admission.lease)
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
        if self._redis is not None:
            await self._redis.aclose()
