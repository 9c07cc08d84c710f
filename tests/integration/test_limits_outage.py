"""Redis going away and coming back under a running gateway (a private redis-server we kill).

Fail open: no request fails while Redis is down, limits fall back to this gateway's own
buckets, and once Redis is back (empty, its script cache flushed) they are shared again.
Fail closed: while Redis is down every limited request gets 503 rate_limiter_unavailable.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import yaml

from gateway.config.keys import hash_key, new_key
from tests.procs import Proc, one_worker_models, start_fake, start_gateway
from tests.redis_server import RedisServer

DB = 13
SMALL_RPM = 5
LIMITS: dict[str, dict[str, int]] = {
    "big": {"rpm": 100_000},
    "small": {"rpm": SMALL_RPM},
    "closed": {"rpm": 100_000},
}
CHAT_BODY = {"model": "fake-a", "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class Outage:
    redis: RedisServer
    open_gateway: str  # GATEWAY_REDIS_FAIL_OPEN=true (the default)
    closed_gateway: str  # GATEWAY_REDIS_FAIL_OPEN=false
    keys: dict[str, str]

    def auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}"}


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    tmp = tmp_path_factory.mktemp("limits-outage")
    server = RedisServer(tmp)
    server.start()
    server.client(DB).flushdb()
    keys = {name: new_key() for name in LIMITS}
    entries = [
        {"name": name, "sha256": hash_key(keys[name]), **limits} for name, limits in LIMITS.items()
    ]
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": entries}))
    procs: list[Proc] = []
    try:
        fake, fake_url = start_fake(tmp, "fake-a")
        procs.append(fake)
        models = one_worker_models(fake_url)
        env = {
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_KEYS_FILE": str(keys_file),
            "GATEWAY_REDIS_URL": server.url(DB),
        }
        opened, open_url = start_gateway(tmp, models, env)
        procs.append(opened)
        closed, closed_url = start_gateway(tmp, models, {**env, "GATEWAY_REDIS_FAIL_OPEN": "false"})
        procs.append(closed)
        yield Outage(server, open_url, closed_url, keys)
    finally:
        for proc in reversed(procs):
            proc.stop()
        server.kill()


@pytest.fixture
def redis_up(outage: Outage) -> Iterator[Outage]:
    """Each test starts with Redis running and leaves it running."""
    if not outage.redis.running:
        outage.redis.start()
    yield outage
    if not outage.redis.running:
        outage.redis.start()


def metric(gateway: str, name: str) -> float:
    text = httpx.get(gateway + "/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def post(client: httpx.AsyncClient, gateway: str, auth: dict[str, str]) -> httpx.Response:
    return await client.post(gateway + "/v1/chat/completions", json=CHAT_BODY, headers=auth)


async def load_while(
    gateway: str,
    auth: dict[str, str],
    during: float,
    action_at: float,
    action: Callable[[], object],
) -> list[httpx.Response]:
    """Eight clients sending back to back for `during` s; `action()` runs at `action_at` s."""
    answers: list[httpx.Response] = []
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + during

    async def client_loop(client: httpx.AsyncClient) -> None:
        while loop.time() < stop_at:
            answers.append(await post(client, gateway, auth))

    async with httpx.AsyncClient(timeout=10) as client:
        workers = [asyncio.create_task(client_loop(client)) for _ in range(8)]
        await asyncio.sleep(action_at)
        await asyncio.to_thread(action)
        await asyncio.gather(*workers)
    return answers


async def until(
    gateway: str, auth: dict[str, str], done: Callable[[], bool], seconds: float = 8.0
) -> list[httpx.Response]:
    """Send a request every 50 ms until `done()` holds; every answer, for the caller to check."""
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            answers.append(await post(client, gateway, auth))
            if done():
                return answers
            assert time.monotonic() < deadline, f"not done after {seconds}s"
            await asyncio.sleep(0.05)


async def burst(gateway: str, auth: dict[str, str], count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        return await asyncio.gather(*(post(client, gateway, auth) for _ in range(count)))


def statuses(answers: list[httpx.Response]) -> set[int]:
    return {a.status_code for a in answers}


async def redis_decided_burst(
    outage: Outage, gateway: str, key: str, count: int, *, flush: bool = False
) -> list[httpx.Response]:
    """A burst the gateway decided in Redis alone: it starts past the limiter's retry interval
    (1 s) after any Redis error and meets no new one; otherwise it is sent again.

    (Any Redis error sends the limiter off Redis for the next second.)
    """
    deadline = time.monotonic() + 15
    while True:
        await asyncio.sleep(1.1)
        if flush:
            outage.redis.client(DB).flushdb()
        errors = metric(gateway, "gateway_redis_errors_total")
        answers = await burst(gateway, outage.auth(key), count)
        if metric(gateway, "gateway_redis_errors_total") == errors:
            return answers
        assert time.monotonic() < deadline, "the gateway never got back on Redis"


def not_degraded(gateway: str) -> Callable[[], bool]:
    return lambda: metric(gateway, "gateway_ratelimit_degraded") == 0


async def test_fail_open_serves_through_a_redis_outage_and_shares_limits_again_after(
    redis_up: Outage,
) -> None:
    outage, gateway = redis_up, redis_up.open_gateway
    errors_before = metric(gateway, "gateway_redis_errors_total")

    # Redis dies under load: nobody notices but the metrics
    answers = await load_while(gateway, outage.auth("big"), 1.5, 0.5, outage.redis.kill)
    assert len(answers) > 20
    assert statuses(answers) == {200}  # 100000 rpm: nothing to refuse, and no 5xx
    assert metric(gateway, "gateway_redis_errors_total") > errors_before
    assert metric(gateway, "gateway_ratelimit_degraded") == 1

    # meanwhile this gateway's own buckets still hold the small key to its limit
    answers = await burst(gateway, outage.auth("small"), 3 * SMALL_RPM)
    assert [a.status_code for a in answers].count(200) == SMALL_RPM
    assert [a.status_code for a in answers].count(429) == 2 * SMALL_RPM
    assert metric(gateway, "gateway_ratelimit_degraded") == 1

    # Redis is back, empty and without the scripts (NOSCRIPT): within seconds the gateway
    # says so, and never failed a request meanwhile
    await asyncio.to_thread(outage.redis.start)
    answers = await until(gateway, outage.auth("big"), not_degraded(gateway))
    assert statuses(answers) == {200}

    # limits are shared through Redis again: its fresh bucket admits exactly SMALL_RPM
    answers = await redis_decided_burst(outage, gateway, "small", 3 * SMALL_RPM, flush=True)
    assert [a.status_code for a in answers].count(200) == SMALL_RPM
    for answer in answers:
        if answer.status_code != 200:
            assert answer.status_code == 429
            assert answer.json()["error"]["code"] == "rate_limit_exceeded"
    assert outage.redis.client(DB).exists("gw:{small}:rpm")
    assert metric(gateway, "gateway_ratelimit_degraded") == 0


async def test_fail_closed_answers_503_while_redis_is_down_and_recovers_after(
    redis_up: Outage,
) -> None:
    outage, gateway = redis_up, redis_up.closed_gateway
    auth = outage.auth("closed")
    assert statuses(await redis_decided_burst(outage, gateway, "closed", 5)) == {200}

    answers = await load_while(gateway, auth, 1.5, 0.5, outage.redis.kill)
    assert statuses(answers) == {200, 503}  # never a 500

    answers = await burst(gateway, auth, 10)
    assert statuses(answers) == {503}
    for answer in answers:
        error = answer.json()["error"]
        assert error["code"] == "rate_limiter_unavailable"
        assert error["type"] == "server_error"
        assert answer.headers["retry-after"] == "1"
    assert metric(gateway, "gateway_redis_errors_total") > 0
    assert metric(gateway, "gateway_ratelimit_degraded") == 1

    await asyncio.to_thread(outage.redis.start)
    answers = await until(gateway, auth, not_degraded(gateway))
    assert statuses(answers) <= {200, 503}
    assert statuses(await redis_decided_burst(outage, gateway, "closed", 10)) == {200}


async def test_a_redis_restart_between_requests_costs_fail_open_clients_nothing(
    redis_up: Outage,
) -> None:
    """The restart drops every pooled connection and the script cache (NOSCRIPT)."""
    outage, gateway, auth = redis_up, redis_up.open_gateway, redis_up.auth("big")
    assert statuses(await redis_decided_burst(outage, gateway, "big", 10)) == {200}
    await asyncio.to_thread(outage.redis.restart)
    answers = await burst(gateway, auth, 20)
    answers += await until(gateway, auth, not_degraded(gateway))
    assert statuses(answers) == {200}
    assert statuses(await redis_decided_burst(outage, gateway, "big", 5)) == {200}
    assert outage.redis.client(DB).exists("gw:{big}:rpm")  # the scripts run again


async def test_a_redis_restart_between_requests_is_invisible_to_fail_closed_clients(
    redis_up: Outage,
) -> None:
    outage, gateway, auth = redis_up, redis_up.closed_gateway, redis_up.auth("closed")
    assert statuses(await redis_decided_burst(outage, gateway, "closed", 20)) == {200}
    errors = metric(gateway, "gateway_redis_errors_total")
    await asyncio.to_thread(outage.redis.restart)
    answers = await burst(gateway, auth, 20)
    assert [a.status_code for a in answers] == [200] * 20
    assert metric(gateway, "gateway_redis_errors_total") == errors
