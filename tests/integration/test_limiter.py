"""The Limiter around the limit rules: 429s with OpenAI's headers, token accounting on settle,
and failing open or closed while Redis is unreachable (real Redis on 127.0.0.1:6379 with a DB of
each test's own; a port nobody listens on for the outage)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.config.keys import Principal
from gateway.errors import LimiterUnavailable, RateLimited
from gateway.limits.buckets import Counters, Decision, LocalBuckets, Spent
from gateway.limits.budget import Periods
from gateway.limits.headroom import Headroom
from gateway.limits.limiter import Limiter
from gateway.limits.redis_buckets import RedisBuckets
from gateway.observe.metrics import Metrics
from tests.principals import key

DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
DURATION = re.compile(r"^(\d+ms|\d+s|\d+m\d+s)$")  # OpenAI's reset format: 20ms, 6s, 1m30s


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --- the Limiter around them --------------------------------------------------------------------


@pytest.fixture(params=["redis", "local-only"])
async def limiter(
    request: pytest.FixtureRequest, redis_url: str
) -> AsyncIterator[tuple[Limiter, Metrics]]:
    """A fail-closed Limiter on the real Redis, or one without Redis (local buckets only)."""
    metrics = Metrics()
    redis_buckets = None
    if request.param == "redis":
        redis_buckets = RedisBuckets(redis_url, timeout=2.0, lease_ttl=60.0)
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
    # Tokens are counted for every key (usage per key); a missing usage report only counts
    # for keys whose limits need it (tpm, budgets).
    assert sample(metrics, "gateway_key_tokens_total", key=principal.name) == 7
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


class ScriptedRedis:
    """Stands in for Redis: each decide() plays the next scripted reply, an error or a wait."""

    def __init__(self, replies: list[Exception | asyncio.Event | None]) -> None:
        self._replies = replies
        self.started = asyncio.Event()
        self.busy = False  # what batching() says

    async def decide(
        self, principal: Principal, cost: int, lease: str, when: Periods | None = None
    ) -> Decision:
        reply = self._replies.pop(0) if self._replies else None
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, asyncio.Event):
            self.started.set()
            await reply.wait()
        return Decision(True, "", 0.0, 99.0, 0.0)

    def batching(self) -> bool:
        return self.busy

    async def settle(
        self,
        principal: Principal,
        delta: int,
        lease: str,
        spent: Spent | None = None,
        when: Periods | None = None,
    ) -> None:
        return None

    async def usage(self, name: str, when: Periods) -> tuple[Counters, Counters]:
        return {}, {}

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


async def test_early_only_after_a_decision_while_redis_is_idle_and_not_after_trouble() -> None:
    scripted = ScriptedRedis([None, None, redis.ConnectionError("closed")])
    limiter = Limiter(
        scripted, LocalBuckets(), Metrics(), fail_open=True, headroom=Headroom(window=60.0)
    )
    principal = key(rpm=100)
    assert not limiter.early(principal, 10)  # nothing known of the key yet
    await limiter.admit(principal, 10)  # 99 requests left
    scripted.busy = True
    assert not limiter.early(principal, 10)  # decisions already share round trips: wait
    scripted.busy = False
    assert limiter.early(principal, 10)
    await limiter.admit(principal, 10, early=True)
    await limiter.admit(principal, 10)  # Redis fails: local, and nothing goes early for now
    assert not limiter.early(principal, 10)


async def test_early_admits_are_decided_before_the_key_s_later_requests(redis_url: str) -> None:
    """An early request was judged against the key's headroom then; requests of the key that
    reach Redis after it was judged (here: ones already waiting to run) must not use that
    headroom up first, or Redis refuses a request the worker is already working on."""
    limiter = Limiter(
        RedisBuckets(redis_url, timeout=2.0, lease_ttl=60.0),
        LocalBuckets(),
        Metrics(),
        fail_open=False,
        headroom=Headroom(window=60.0),
    )
    principal = key(tpm=1000)
    try:
        await limiter.admit(principal, 100)  # 900 left
        waiting = [asyncio.create_task(limiter.admit(principal, 100)) for _ in range(9)]
        assert limiter.early(principal, 100)  # 800 would be left
        early = asyncio.create_task(limiter.admit(principal, 100, early=True))
        results = await asyncio.gather(early, *waiting, return_exceptions=True)
    finally:
        await limiter.aclose()
    assert not isinstance(results[0], BaseException), results[0]  # the early one is admitted
    refused = [r for r in results[1:] if isinstance(r, RateLimited)]
    assert len(refused) == 1  # 1,000 tokens: the first, the early one and 8 of the 9
