"""Every rule that exists twice, in Lua for Redis and in Python for one process, held to the same
expectations in both: the per-key limits (admit.lua and settle.lua against LocalBuckets) and the
worker ejection backoff (eject.lua against LocalEjections). Real Redis on 127.0.0.1:6379, a DB
of each test's own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis

from gateway.limits.buckets import Buckets, LocalBuckets, Spent
from gateway.limits.budget import periods
from gateway.limits.redis_buckets import RedisBuckets
from gateway.routing.ejections import Backoff, Ejections, LocalEjections, RedisEjections
from tests.principals import key, lease


@pytest.fixture(params=["local", "redis"])
async def backend(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Buckets]:
    buckets: Buckets = (
        LocalBuckets()
        if request.param == "local"
        else RedisBuckets(redis_url, timeout=2.0, lease_ttl=60.0)
    )
    try:
        yield buckets
    finally:
        await buckets.aclose()


# --- the rules, in both backends ----------------------------------------------------------------


async def test_rpm_admits_exactly_the_limit_then_refuses_requests_for_one_refill(
    backend: Buckets,
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
    backend: Buckets,
) -> None:
    principal = key(tpm=1000)
    too_large = await backend.decide(principal, 1001, lease())
    assert not too_large.admitted
    assert too_large.refused == "tokens"
    assert too_large.retry_after < 0
    # the refusal took nothing: the whole limit is still there
    assert (await backend.decide(principal, 1000, lease())).admitted


async def test_tpm_refuses_a_reservation_the_bucket_cannot_cover_until_it_refills(
    backend: Buckets,
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


@pytest.mark.parametrize(
    ("reserved", "used"),
    [
        (5000, 1000),  # the unused part comes back
        (1000, 3000),  # the overrun is charged
    ],
)
async def test_settle_leaves_exactly_what_was_used_taken_from_the_bucket(
    backend: Buckets, reserved: int, used: int
) -> None:
    tpm = 6000
    principal = key(tpm=tpm)
    started = time.monotonic()
    claim = lease()
    assert (await backend.decide(principal, reserved, claim)).admitted
    await backend.settle(principal, reserved - used, claim)
    left = (await backend.decide(principal, 0, lease())).tokens_left
    refill = (time.monotonic() - started) * tpm / 60 + 1
    assert tpm - used <= left <= tpm - used + refill


async def test_an_overrun_beyond_the_whole_limit_leaves_a_debt_that_delays_the_next_request(
    backend: Buckets,
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
    backend: Buckets,
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


async def test_settling_the_same_lease_twice_frees_only_one_slot(backend: Buckets) -> None:
    principal = key(max_concurrent=2)
    first, second = lease(), lease()
    assert (await backend.decide(principal, 10, first)).admitted
    assert (await backend.decide(principal, 10, second)).admitted
    await backend.settle(principal, 0, first)
    await backend.settle(principal, 0, first)
    assert (await backend.decide(principal, 10, lease())).admitted
    assert (await backend.decide(principal, 10, lease())).refused == "concurrency"


async def test_a_refused_request_takes_nothing_from_any_limit(backend: Buckets) -> None:
    principal = key(rpm=2, tpm=1000, max_concurrent=1)
    assert (await backend.decide(principal, 400, lease())).admitted
    for _ in range(5):  # refused on concurrency: neither a request nor tokens are taken
        refused = await backend.decide(principal, 400, lease())
        assert refused.refused == "concurrency"
    assert int(refused.requests_left) == 1
    assert 600 <= refused.tokens_left < 610


async def test_a_budget_admits_while_charged_plus_cost_fits_and_settle_reconciles(
    backend: Buckets,
) -> None:
    principal = key(tokens_per_day=1000, tokens_per_month=5000)
    when = periods()
    claims = [lease() for _ in range(3)]
    for n, claim in enumerate(claims, start=1):
        decision = await backend.decide(principal, 300, claim, when)
        assert decision.admitted
        assert (decision.day_charged, decision.month_charged) == (300 * n, 300 * n)
    refused = await backend.decide(principal, 101, lease(), when)  # 900 + 101 > 1000
    assert (refused.admitted, refused.refused) == (False, "day")
    assert refused.retry_after < 0
    assert refused.day_charged == 900  # a refusal charges nothing
    # two of them used 100 of their 300: 400 come back, to both periods
    for claim in claims[:2]:
        await backend.settle(principal, 300 - 100, claim, Spent("m", 60, 40), when)
    admitted = await backend.decide(principal, 400, lease(), when)
    assert admitted.admitted
    assert (admitted.day_charged, admitted.month_charged) == (900, 900)
    # an overrun is charged too
    await backend.settle(principal, 300 - 450, claims[2], Spent("m", 400, 50), when)
    assert (await backend.decide(principal, 0, lease(), when)).day_charged == 1050
    assert (await backend.decide(principal, 1, lease(), when)).refused == "day"
    day, month = await backend.usage(principal.name, when)
    for counters in (day, month):
        assert counters["budget"] == 1050
        assert counters["m|requests"] == 3
        assert counters["m|prompt"] == 520
        assert counters["m|completion"] == 130


async def test_a_month_budget_refuses_on_its_own_and_a_request_above_it_never_passes(
    backend: Buckets,
) -> None:
    principal = key(tokens_per_month=500)
    assert (await backend.decide(principal, 501, lease())).refused == "month"
    assert (await backend.decide(principal, 500, lease())).admitted
    assert (await backend.decide(principal, 1, lease())).refused == "month"


async def test_a_key_without_budget_counts_usage_but_charges_nothing(backend: Buckets) -> None:
    principal = key(rpm=100)
    when = periods()
    claim = lease()
    assert (await backend.decide(principal, 50, claim, when)).day_charged == 0
    await backend.settle(principal, 40, claim, Spent("m", 7, 3), when)
    await backend.settle(principal, 0, "", Spent("other", 1, 1), when)
    day, _ = await backend.usage(principal.name, when)
    assert day.get("budget", 0) == 0
    assert (day["m|prompt"], day["m|completion"], day["other|requests"]) == (7, 3, 1)


async def test_a_waiting_settle_rides_in_the_next_admit_of_its_key(redis_url: str) -> None:
    """One EVALSHA for the settle of a finished request and the admit of the next: one round
    trip per request."""
    buckets = RedisBuckets(redis_url, timeout=2.0, lease_ttl=60.0, settle_delay=10.0)
    client = redis.Redis.from_url(redis_url)
    try:
        principal = key(rpm=1000, tpm=100_000, max_concurrent=1)
        claim = lease()
        assert (await buckets.decide(principal, 500, claim)).admitted
        calls = client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        for _ in range(20):
            await buckets.settle(principal, 400, claim, Spent("m", 60, 40))
            claim = lease()
            decision = await buckets.decide(principal, 500, claim)
            assert decision.admitted  # the lease came back first, in the same script
        after = client.info("commandstats")["cmdstat_evalsha"]["calls"]
        assert after - calls == 20
        assert 97_500 <= decision.tokens_left <= 98_500  # each round: +400 back, -500 taken
        await buckets.settle(principal, 400, claim, Spent("m", 60, 40))
        await buckets.flush()  # what has no admit to ride in goes alone
        day, _ = await buckets.usage(principal.name, periods())
        assert day["m|requests"] == 21
    finally:
        client.close()
        await buckets.aclose()


async def test_redis_lease_of_a_vanished_holder_expires_after_its_ttl(redis_url: str) -> None:
    buckets = RedisBuckets(redis_url, timeout=2.0, lease_ttl=0.3)
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


# --- the ejection backoff, in both backends -----------------------------------------------------

BACKOFF = Backoff(base=0.05, max=0.15, reset=0.1)


@pytest.fixture(params=["local", "redis"])
async def ejections(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Ejections]:
    record: Ejections = (
        LocalEjections(BACKOFF)
        if request.param == "local"
        else RedisEjections(redis_url, 2.0, BACKOFF, "test:worker:")
    )
    try:
        yield record
    finally:
        await record.aclose()


async def test_first_ejection_lasts_the_base_window(ejections: Ejections) -> None:
    assert await ejections.eject("m/w") == pytest.approx(0.05, abs=0.002)
    left, other = await ejections.remaining(["m/w", "m/other"])
    assert 0.03 < left <= 0.05
    assert other == 0


async def test_ejecting_an_ejected_worker_keeps_its_window_and_adds_no_strike(
    ejections: Ejections,
) -> None:
    await ejections.eject("m/w")
    again = await ejections.eject("m/w")  # another replica saw the same outage
    assert 0 < again <= 0.05
    await asyncio.sleep(0.06)
    assert await ejections.eject("m/w") == pytest.approx(0.1, abs=0.002)  # the second strike


async def test_ejections_in_a_row_double_up_to_the_cap(ejections: Ejections) -> None:
    windows = []
    for _ in range(4):
        windows.append(await ejections.eject("m/w"))
        await asyncio.sleep(windows[-1] + 0.01)
    assert windows == pytest.approx([0.05, 0.1, 0.15, 0.15], abs=0.002)


async def test_strikes_are_forgotten_after_the_reset_time_without_an_ejection(
    ejections: Ejections,
) -> None:
    await ejections.eject("m/w")
    await asyncio.sleep(0.06)
    assert await ejections.eject("m/w") == pytest.approx(0.1, abs=0.002)
    await asyncio.sleep(0.1 + 0.1 + 0.03)  # the window, then the reset time
    assert await ejections.eject("m/w") == pytest.approx(0.05, abs=0.002)


async def test_ejection_windows_end_on_their_own(ejections: Ejections) -> None:
    await ejections.eject("m/a")
    await asyncio.sleep(0.02)
    await ejections.eject("m/b")
    left_a, left_b = await ejections.remaining(["m/a", "m/b"])
    assert left_a < left_b
    await asyncio.sleep(0.07)
    assert await ejections.remaining(["m/a", "m/b"]) == [0, 0]
