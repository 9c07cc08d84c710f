"""The per-key limit rules, held to the same expectations in both backends.

`LocalBuckets` (in this process) and `RedisBuckets` (limits.lua / settle.lua, against the real
Redis on 127.0.0.1:6379, DB 14, flushed at the start) must decide alike. Then the `Limiter`
around them: 429s with their headers, and failing open or closed when Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Protocol

import pytest
import redis

from gateway.errors import LimiterUnavailable, RateLimited
from gateway.keys import Principal
from gateway.metrics import Metrics
from gateway.ratelimit import Decision, Limiter, LocalBuckets, RedisBuckets

REDIS_URL = "redis://127.0.0.1:6379/14"
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
DURATION = re.compile(r"^(\d+ms|\d+s|\d+m\d+s)$")  # OpenAI's reset format: 20ms, 6s, 1m30s


class Backend(Protocol):
    async def decide(self, principal: Principal, cost: int, lease: str) -> Decision: ...
    async def settle(self, principal: Principal, delta: int, lease: str) -> None: ...


class AsyncLocal:
    """LocalBuckets behind the same awaitable interface as RedisBuckets."""

    def __init__(self) -> None:
        self.buckets = LocalBuckets()

    async def decide(self, principal: Principal, cost: int, lease: str) -> Decision:
        return self.buckets.decide(principal, cost, lease)

    async def settle(self, principal: Principal, delta: int, lease: str) -> None:
        self.buckets.settle(principal, delta, lease)


def key(
    rpm: int | None = None, tpm: int | None = None, max_concurrent: int | None = None
) -> Principal:
    """A principal with a name of its own, so no test sees another's buckets."""
    return Principal(
        name=f"k-{uuid.uuid4().hex[:12]}",
        models=None,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
    )


def lease() -> str:
    return uuid.uuid4().hex


@pytest.fixture(scope="module", autouse=True)
def _flushed_db() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()


@pytest.fixture(params=["local", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "local":
        yield AsyncLocal()
        return
    buckets = RedisBuckets(REDIS_URL, timeout=2.0, lease_ttl=60.0)
    try:
        yield buckets
    finally:
        await buckets.aclose()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- the rules, in both backends ----------------------------------------------------------------


async def test_rpm_admits_exactly_the_limit_then_refuses_requests_for_one_refill(
    backend: Backend,
) -> None:
    rpm = 20
    principal = key(rpm=rpm)
    admitted = [await backend.decide(principal, 50, lease()) for _ in range(rpm)]
    assert all(d.admitted for d in admitted)
    assert [int(d.requests_left) for d in admitted] == list(range(rpm - 1, -1, -1))

    refused = await backend.decide(principal, 50, lease())
    assert not refused.admitted
    assert refused.refused == "requests"
    # one request refills in 60/rpm s; a little of it has already refilled
    assert 0.9 * 60 / rpm <= refused.retry_after <= 60 / rpm
    again = await backend.decide(principal, 50, lease())
    assert (again.admitted, again.refused) == (False, "requests")


async def test_tpm_refuses_a_reservation_above_the_limit_as_never_passing(
    backend: Backend,
) -> None:
    principal = key(tpm=1000)
    too_large = await backend.decide(principal, 1001, lease())
    assert not too_large.admitted
    assert too_large.refused == "tokens"
    assert too_large.retry_after < 0
    # the refusal took nothing: the whole limit is still there
    assert (await backend.decide(principal, 1000, lease())).admitted


async def test_tpm_refuses_a_reservation_the_bucket_cannot_cover_until_it_refills(
    backend: Backend,
) -> None:
    tpm = 6000  # refills 100 tokens/s
    principal = key(tpm=tpm)
    first = await backend.decide(principal, 4000, lease())
    assert first.admitted
    assert 2000 <= first.tokens_left <= 2010
    second = await backend.decide(principal, 4000, lease())
    assert (second.admitted, second.refused) == (False, "tokens")
    # 2000 tokens missing at 100/s
    assert 19 <= second.retry_after <= 20


async def test_settle_refunds_the_unused_part_of_the_reservation(backend: Backend) -> None:
    tpm, reserved, used = 6000, 5000, 1000
    principal = key(tpm=tpm)
    started = time.monotonic()
    claim = lease()
    assert (await backend.decide(principal, reserved, claim)).admitted
    await backend.settle(principal, reserved - used, claim)
    left = (await backend.decide(principal, 0, lease())).tokens_left
    refill = (time.monotonic() - started) * tpm / 60 + 1
    # what was used is gone, the rest came back (without settling: 1000 left)
    assert tpm - used <= left <= tpm - used + refill


async def test_settle_charges_tokens_used_beyond_the_reservation(backend: Backend) -> None:
    tpm, reserved, used = 6000, 1000, 3000
    principal = key(tpm=tpm)
    started = time.monotonic()
    claim = lease()
    assert (await backend.decide(principal, reserved, claim)).admitted
    await backend.settle(principal, reserved - used, claim)
    left = (await backend.decide(principal, 0, lease())).tokens_left
    refill = (time.monotonic() - started) * tpm / 60 + 1
    # below what the reservation alone left (5000): the overrun is charged
    assert tpm - used <= left <= tpm - used + refill


async def test_an_overrun_beyond_the_whole_limit_leaves_a_debt_that_delays_the_next_request(
    backend: Backend,
) -> None:
    tpm = 6000
    principal = key(tpm=tpm)
    claim = lease()
    assert (await backend.decide(principal, tpm, claim)).admitted
    await backend.settle(principal, tpm - 8000, claim)  # used 8000 of 6000 reserved
    refused = await backend.decide(principal, 1, lease())
    assert (refused.admitted, refused.refused) == (False, "tokens")
    assert refused.tokens_left < -1900
    # 2001 tokens to refill at 100/s
    assert 19 <= refused.retry_after <= 20.02


async def test_max_concurrent_admits_n_leases_refuses_the_next_and_settle_frees_one(
    backend: Backend,
) -> None:
    principal = key(max_concurrent=3)
    leases = [lease() for _ in range(3)]
    for held in leases:
        assert (await backend.decide(principal, 10, held)).admitted
    refused = await backend.decide(principal, 10, lease())
    assert (refused.admitted, refused.refused) == (False, "concurrency")
    assert refused.retry_after > 0

    await backend.settle(principal, 0, leases[1])
    assert (await backend.decide(principal, 10, lease())).admitted
    assert (await backend.decide(principal, 10, lease())).refused == "concurrency"


async def test_settling_the_same_lease_twice_frees_only_one_slot(backend: Backend) -> None:
    principal = key(max_concurrent=2)
    first, second = lease(), lease()
    assert (await backend.decide(principal, 10, first)).admitted
    assert (await backend.decide(principal, 10, second)).admitted
    await backend.settle(principal, 0, first)
    await backend.settle(principal, 0, first)
    assert (await backend.decide(principal, 10, lease())).admitted
    assert (await backend.decide(principal, 10, lease())).refused == "concurrency"


async def test_a_refused_request_takes_nothing_from_any_limit(backend: Backend) -> None:
    principal = key(rpm=2, tpm=1000, max_concurrent=1)
    assert (await backend.decide(principal, 400, lease())).admitted
    for _ in range(5):  # refused on concurrency: neither a request nor tokens are taken
        refused = await backend.decide(principal, 400, lease())
        assert refused.refused == "concurrency"
    assert int(refused.requests_left) == 1
    assert 600 <= refused.tokens_left < 610


async def test_redis_lease_of_a_vanished_holder_expires_after_its_ttl() -> None:
    buckets = RedisBuckets(REDIS_URL, timeout=2.0, lease_ttl=0.3)
    try:
        principal = key(max_concurrent=1)
        assert (await buckets.decide(principal, 10, lease())).admitted  # never settled
        assert (await buckets.decide(principal, 10, lease())).refused == "concurrency"
        deadline = time.monotonic() + 5
        while not (await buckets.decide(principal, 10, lease())).admitted:
            assert time.monotonic() < deadline, "the abandoned lease never expired"
            await asyncio.sleep(0.05)
    finally:
        await buckets.aclose()


# --- the Limiter around them --------------------------------------------------------------------


@pytest.fixture(params=["redis", "local-only"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Limiter, Metrics]]:
    """A fail-closed Limiter on the real Redis, or one without Redis (local buckets only)."""
    metrics = Metrics()
    redis_buckets = None
    if request.param == "redis":
        redis_buckets = RedisBuckets(REDIS_URL, timeout=2.0, lease_ttl=60.0)
    limiter = Limiter(redis_buckets, LocalBuckets(), metrics, fail_open=False)
    try:
        yield limiter, metrics
    finally:
        await limiter.aclose()


async def test_limiter_admits_with_ratelimit_headers_and_refuses_with_a_429(
    limiter: tuple[Limiter, Metrics],
) -> None:
    gate, metrics = limiter
    principal = key(rpm=3, tpm=1000)
    for n in range(3):
        admission = await gate.admit(principal, 100)
        headers = {k.decode(): v.decode() for k, v in admission.headers}
        assert headers["x-ratelimit-limit-requests"] == "3"
        assert headers["x-ratelimit-remaining-requests"] == str(2 - n)
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert headers["x-ratelimit-remaining-tokens"] == str(900 - 100 * n)
        assert DURATION.match(headers["x-ratelimit-reset-requests"])
        assert DURATION.match(headers["x-ratelimit-reset-tokens"])

    with pytest.raises(RateLimited) as refused:
        await gate.admit(principal, 100)
    error = refused.value
    assert error.status == 429
    assert error.code == "rate_limit_exceeded"
    assert error.param == "requests"
    assert principal.name in error.message
    assert "requests per minute" in error.message
    retry_after = error.headers["retry-after"]
    assert retry_after.isdigit()
    assert 1 <= int(retry_after) <= 20  # one request refills in 20 s
    assert error.headers["x-ratelimit-limit-requests"] == "3"
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert DURATION.match(error.headers["x-ratelimit-reset-requests"])
    assert error.headers["x-ratelimit-limit-tokens"] == "1000"
    assert error.headers["x-ratelimit-remaining-tokens"] == "700"
    assert (
        sample(metrics, "gateway_ratelimit_rejections_total", key=principal.name, limit="requests")
        == 1
    )


async def test_limiter_refuses_a_request_larger_than_the_tpm_limit_as_too_large(
    limiter: tuple[Limiter, Metrics],
) -> None:
    gate, metrics = limiter
    principal = key(tpm=1000)
    with pytest.raises(RateLimited) as refused:
        await gate.admit(principal, 5000)
    error = refused.value
    assert error.status == 429
    assert error.param == "tokens"
    assert "too large" in error.message
    assert error.headers["retry-after"] == "60"
    assert error.headers["x-ratelimit-limit-tokens"] == "1000"
    assert (
        sample(metrics, "gateway_ratelimit_rejections_total", key=principal.name, limit="tokens")
        == 1
    )


async def test_limiter_concurrency_refusal_is_a_429_and_settle_frees_the_slot(
    limiter: tuple[Limiter, Metrics],
) -> None:
    gate, metrics = limiter
    principal = key(max_concurrent=1)
    admission = await gate.admit(principal, 10)
    assert admission.headers == []  # no per-minute limit: no x-ratelimit-* headers
    with pytest.raises(RateLimited) as refused:
        await gate.admit(principal, 10)
    assert refused.value.param == "concurrency"
    assert "concurrent requests" in refused.value.message
    assert int(refused.value.headers["retry-after"]) >= 1
    await gate.settle(admission, 7)
    await gate.settle(await gate.admit(principal, 10), None)  # the slot came back
    # Tokens are only accounted for keys with a tpm limit (only they ask for usage).
    assert sample(metrics, "gateway_key_tokens_total", key=principal.name) == 0
    assert sample(metrics, "gateway_usage_missing_total") == 0
    counted = key(tpm=1000, max_concurrent=1)
    await gate.settle(await gate.admit(counted, 10), 7)
    await gate.settle(await gate.admit(counted, 10), None)
    assert sample(metrics, "gateway_key_tokens_total", key=counted.name) == 7
    assert sample(metrics, "gateway_usage_missing_total") == 1


def dead_redis_limiter(*, fail_open: bool, retry_interval: float) -> tuple[Limiter, Metrics]:
    """A Limiter whose Redis never answers (nothing listens on its port)."""
    metrics = Metrics()
    redis = RedisBuckets(DEAD_REDIS_URL, timeout=0.5, lease_ttl=60.0)
    limiter = Limiter(
        redis, LocalBuckets(), metrics, fail_open=fail_open, retry_interval=retry_interval
    )
    return limiter, metrics


async def test_limiter_fails_open_to_local_buckets_while_redis_is_unreachable() -> None:
    gate, metrics = dead_redis_limiter(fail_open=True, retry_interval=60.0)
    try:
        principal = key(rpm=2)
        first = await gate.admit(principal, 10)
        assert first.local
        assert sample(metrics, "gateway_redis_errors_total") == 1
        assert sample(metrics, "gateway_ratelimit_degraded") == 1
        assert (await gate.admit(principal, 10)).local
        # the local buckets enforce the limit on their own
        with pytest.raises(RateLimited):
            await gate.admit(principal, 10)
        await gate.settle(first, 5)
        # within retry_interval Redis is not tried again: still the one error
        assert sample(metrics, "gateway_redis_errors_total") == 1
        assert sample(metrics, "gateway_ratelimit_local_decisions_total") == 3
        assert sample(metrics, "gateway_ratelimit_degraded") == 1
    finally:
        await gate.aclose()


async def test_limiter_tries_redis_again_once_the_retry_interval_has_passed() -> None:
    gate, metrics = dead_redis_limiter(fail_open=True, retry_interval=0.2)
    try:
        principal = key(rpm=100)
        await gate.admit(principal, 10)
        await gate.admit(principal, 10)
        assert sample(metrics, "gateway_redis_errors_total") == 1
        await asyncio.sleep(0.3)
        assert (await gate.admit(principal, 10)).local
        assert sample(metrics, "gateway_redis_errors_total") == 2
    finally:
        await gate.aclose()


async def test_limiter_fails_closed_with_503_while_redis_is_unreachable() -> None:
    gate, metrics = dead_redis_limiter(fail_open=False, retry_interval=60.0)
    try:
        principal = key(rpm=100)
        for _ in range(2):
            with pytest.raises(LimiterUnavailable) as unavailable:
                await gate.admit(principal, 10)
            assert unavailable.value.status == 503
            assert unavailable.value.code == "rate_limiter_unavailable"
            assert unavailable.value.headers["retry-after"] == "1"
        assert sample(metrics, "gateway_redis_errors_total") == 1
        assert sample(metrics, "gateway_ratelimit_degraded") == 1
    finally:
        await gate.aclose()


class ScriptedRedis(RedisBuckets):
    """Stands in for Redis: each decide() plays the next scripted reply, an error or a wait."""

    def __init__(self, replies: list[Exception | asyncio.Event | None]) -> None:
        self._replies = replies
        self.started = asyncio.Event()

    async def decide(self, principal: Principal, cost: int, lease: str) -> Decision:
        reply = self._replies.pop(0) if self._replies else None
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, asyncio.Event):
            self.started.set()
            await reply.wait()
        return Decision(True, "", 0.0, 99.0, 0.0)

    async def settle(self, principal: Principal, delta: int, lease: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_degraded_gauge_reads_1_exactly_while_decisions_are_made_without_redis() -> None:
    metrics = Metrics()
    slow_reply = asyncio.Event()
    scripted = ScriptedRedis([slow_reply, redis.ConnectionError("connection closed by server")])
    gate = Limiter(scripted, LocalBuckets(), metrics, fail_open=True, retry_interval=60.0)
    principal = key(rpm=100)

    in_flight = asyncio.create_task(gate.admit(principal, 10))
    await scripted.started.wait()
    assert (await gate.admit(principal, 10)).local  # Redis failed this one
    assert sample(metrics, "gateway_ratelimit_degraded") == 1
    slow_reply.set()
    assert not (await in_flight).local  # the call begun earlier got Redis's answer

    after = await gate.admit(principal, 10)
    assert sample(metrics, "gateway_ratelimit_degraded") == (1 if after.local else 0)
