"""Per-key limits shared through Redis by two gateway processes (real sockets, fake worker).

Two separate gateways on their own ports use one Redis DB (13, flushed first); concurrent
bursts split across both must be limited as if by a single gateway.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import yaml
from redis import Redis

from gateway.api.validation import parse_request
from gateway.config.keys import hash_key, new_key
from gateway.limits.reserve import reserve_tokens
from gateway.request import Endpoint
from tests.procs import Proc, one_worker_models, start_fake, start_gateway

CHAT = [{"role": "user", "content": "hi"}]
DURATION = re.compile(r"^(\d+ms|\d+s|\d+m\d+s)$")
RPM, CONCURRENT, TPM = 10, 3, 1000

# key name -> its limits
LIMITS: dict[str, dict[str, int]] = {
    "burst-rpm": {"rpm": RPM},
    "burst-concurrent": {"max_concurrent": CONCURRENT},
    "tokens": {"tpm": TPM},
    "solo-disconnect": {"max_concurrent": 1},
    "solo-cut": {"max_concurrent": 1},
    "headers": {"rpm": 3, "tpm": 5000},
    "early": {"rpm": 100},
    "early-stream": {"rpm": 100},
}


@dataclass
class Shared:
    gateways: list[str]
    fake: str
    keys: dict[str, str]  # key name -> the secret key

    def auth(self, name: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, module_redis_url: str) -> Iterator[Shared]:
    tmp = tmp_path_factory.mktemp("limits-redis")
    keys = {name: new_key() for name in LIMITS}
    entries = [
        {"name": name, "sha256": hash_key(keys[name]), **limits} for name, limits in LIMITS.items()
    ]
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": entries}))
    fake, fake_url = start_fake(tmp, "fake-a")
    models = one_worker_models(fake_url)
    env = {
        "GATEWAY_AUTH_ENABLED": "true",
        "GATEWAY_KEYS_FILE": str(keys_file),
        "GATEWAY_REDIS_URL": module_redis_url,
        # generous: a slow Redis reply must not silently fall back to per-process limits
        "GATEWAY_REDIS_TIMEOUT": "2",
    }
    procs: list[Proc] = [fake]
    try:
        urls = []
        for _ in range(2):
            proc, url = start_gateway(tmp, models, env)
            procs.append(proc)
            urls.append(url)
        yield Shared(urls, fake_url, keys)
    finally:
        for proc in reversed(procs):
            proc.stop()


def metric(gateway: str, name: str, labels: str = "") -> float:
    """One sample of a gateway's /metrics (0 when absent); `labels` as in the exposition."""
    text = httpx.get(gateway + "/metrics").text
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.MULTILINE)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "fake-a", "messages": CHAT, **fields}).encode()


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    text: str

    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = json.loads(self.text)["error"]
        return error

    def events(self) -> list[dict[str, Any]]:
        return [
            json.loads(line[6:])
            for line in self.text.split("\n")
            if line.startswith("data: ") and line != "data: [DONE]"
        ]


async def send(client: httpx.AsyncClient, gateway: str, key: str, payload: bytes) -> Answer:
    """POST a chat completion and read the whole answer (streamed or not)."""
    async with client.stream(
        "POST",
        gateway + "/v1/chat/completions",
        content=payload,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    ) as response:
        text = (await response.aread()).decode()
        return Answer(response.status_code, response.headers, text)


async def burst(shared: Shared, name: str, payloads: list[bytes]) -> list[Answer]:
    """All at once, alternating between the two gateways."""
    async with httpx.AsyncClient(timeout=30) as client:
        answers = await asyncio.gather(
            *(
                send(client, shared.gateways[i % 2], shared.keys[name], payload)
                for i, payload in enumerate(payloads)
            )
        )
    for gateway in shared.gateways:  # decided in Redis, not by per-process fallback buckets
        assert metric(gateway, "gateway_redis_errors_total") == 0
    return answers


def assert_rate_limited(answer: Answer, key: str, what: str) -> None:
    assert answer.status == 429, answer.text
    error = answer.error()
    assert error["code"] == "rate_limit_exceeded"
    assert error["type"] == "rate_limit_error"
    assert key in error["message"]
    assert what in error["message"]
    assert answer.headers["retry-after"].isdigit()
    assert int(answer.headers["retry-after"]) >= 1


async def test_rpm_is_shared_by_two_gateways_exactly_n_of_a_3n_burst_pass(
    shared: Shared,
) -> None:
    answers = await burst(shared, "burst-rpm", [body()] * (3 * RPM))
    passed = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(passed) == RPM, [a.status for a in answers]
    assert len(refused) == 2 * RPM
    for answer in refused:
        assert_rate_limited(answer, "burst-rpm", "requests per minute")
        assert int(answer.headers["retry-after"]) <= 60 // RPM
        assert answer.headers["x-ratelimit-limit-requests"] == str(RPM)
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    # one bucket: the admissions, from either gateway, counted it down 9, 8, ... 0
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in passed)
    assert remaining == list(range(RPM))
    assert {a.headers["x-ratelimit-limit-requests"] for a in passed} == {str(RPM)}


async def test_max_concurrent_is_shared_by_two_gateways_exactly_m_of_a_3m_burst_pass(
    shared: Shared,
) -> None:
    payloads = [body(stream=i % 2 == 1, fake={"stall_first": 1.5}) for i in range(3 * CONCURRENT)]
    answers = await burst(shared, "burst-concurrent", payloads)
    statuses = [a.status for a in answers]
    assert statuses.count(200) == CONCURRENT, statuses
    assert statuses.count(429) == 2 * CONCURRENT, statuses
    for answer in answers:
        if answer.status == 429:
            assert_rate_limited(answer, "burst-concurrent", "concurrent requests")
    # and the slots came back: the next burst admits M again
    answers = await burst(shared, "burst-concurrent", payloads)
    assert [a.status for a in answers].count(200) == CONCURRENT


async def test_tpm_admits_no_more_than_the_limit_covers_and_counts_the_tokens_used(
    shared: Shared,
) -> None:
    chunks = 5
    payloads = []
    for i in range(18):
        kind = i % 3  # unary, stream, stream asking for usage
        fields: dict[str, Any] = {"max_tokens": 100, "fake": {"stall_first": 1.0}}
        if kind:
            fields.update(stream=True)
            fields["fake"]["chunks"] = chunks
        if kind == 2:
            fields.update(stream_options={"include_usage": True})
        payloads.append(body(**fields))
    reserved = [reserve_tokens(parse_request(Endpoint.CHAT, p), 1024) for p in payloads]
    before = sum(metric(g, "gateway_key_tokens_total", '{key="tokens"}') for g in shared.gateways)

    started = time.monotonic()
    answers = await burst(shared, "tokens", payloads)
    refill = (time.monotonic() - started) * TPM / 60

    admitted = [r for r, a in zip(reserved, answers, strict=True) if a.status == 200]
    refused = [r for r, a in zip(reserved, answers, strict=True) if a.status != 200]
    # every admitted request was in flight at once (stalled), so nothing was refunded meanwhile:
    # their reservations fit the limit, and each refused one did not fit in what was left
    assert sum(admitted) <= TPM + refill, (reserved, [a.status for a in answers])
    assert len(admitted) <= TPM // min(reserved) + 1
    assert refused, "the burst never reached the limit"
    assert all(sum(admitted) + r > TPM for r in refused)
    for answer in answers:
        if answer.status != 200:
            assert_rate_limited(answer, "tokens", "tokens per minute")
            assert answer.headers["x-ratelimit-limit-tokens"] == str(TPM)

    expected = 0
    for payload, answer in zip(payloads, answers, strict=True):
        if answer.status != 200:
            continue
        assert answer.headers["x-ratelimit-limit-tokens"] == str(TPM)
        doc = json.loads(payload)
        if not doc.get("stream"):
            usage = json.loads(answer.text)["usage"]
        else:
            usages = [e["usage"] for e in answer.events() if e.get("usage")]
            if doc.get("stream_options"):
                assert len(usages) == 1
                usage = usages[0]
            else:  # the gateway asked for usage itself, and kept it from the client
                assert usages == []
                usage = {"total_tokens": 3 + chunks}
        expected += usage["total_tokens"]

    deadline = time.monotonic() + 3
    while True:
        counted = sum(
            metric(g, "gateway_key_tokens_total", '{key="tokens"}') for g in shared.gateways
        )
        if counted - before == expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert counted - before == expected


def wait_admitted(shared: Shared, name: str, seconds: float = 1.0) -> float:
    """Seconds until a quick request of `name` (on the second gateway) gets a 200."""
    started = time.monotonic()
    while True:
        response = httpx.post(
            shared.gateways[1] + "/v1/chat/completions",
            content=body(),
            headers={**shared.auth(name), "content-type": "application/json"},
        )
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 429, response.text
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{name}: still refused after {seconds}s: {response.text}")
        time.sleep(0.05)


def assert_slot_taken(shared: Shared, name: str) -> None:
    response = httpx.post(
        shared.gateways[1] + "/v1/chat/completions",
        content=body(),
        headers={**shared.auth(name), "content-type": "application/json"},
    )
    assert response.status_code == 429
    assert "concurrent requests" in response.json()["error"]["message"]


def test_a_client_leaving_mid_stream_frees_its_concurrency_slot_at_once(shared: Shared) -> None:
    payload = body(stream=True, fake={"chunks": 50, "gap": 0.2})
    with httpx.stream(
        "POST",
        shared.gateways[0] + "/v1/chat/completions",
        content=payload,
        headers={**shared.auth("solo-disconnect"), "content-type": "application/json"},
    ) as response:
        assert response.status_code == 200
        chunks = response.iter_bytes()  # held: dropping it would close the connection now
        assert next(chunks).startswith(b"data: ")
        assert_slot_taken(shared, "solo-disconnect")
    # leaving the `with` closed the connection after one event, 49 chunks early
    assert wait_admitted(shared, "solo-disconnect") <= 1.0


def test_a_stream_the_worker_cuts_frees_its_concurrency_slot_at_once(shared: Shared) -> None:
    payload = body(stream=True, fake={"cut_after": 2, "gap": 0.5})
    with httpx.stream(
        "POST",
        shared.gateways[0] + "/v1/chat/completions",
        content=payload,
        headers={**shared.auth("solo-cut"), "content-type": "application/json"},
    ) as response:
        assert response.status_code == 200
        assert_slot_taken(shared, "solo-cut")
        text = response.read().decode()
    assert '"code":"upstream_error"' in text.replace(" ", "")
    assert wait_admitted(shared, "solo-cut") <= 1.0


async def test_ratelimit_headers_on_admitted_and_refused_answers(shared: Shared) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        answers = []
        payloads = [body(max_tokens=50), body(max_tokens=50, stream=True), body(max_tokens=50)]
        for i, payload in enumerate(payloads):  # one after another, alternating gateways
            answers.append(
                await send(client, shared.gateways[i % 2], shared.keys["headers"], payload)
            )
        refused = await send(
            client, shared.gateways[1], shared.keys["headers"], body(max_tokens=50)
        )

    first_reservation = reserve_tokens(parse_request(Endpoint.CHAT, payloads[0]), 1024)
    for n, answer in enumerate(answers):
        assert answer.status == 200, answer.text
        assert answer.headers["x-ratelimit-limit-requests"] == "3"
        assert answer.headers["x-ratelimit-remaining-requests"] == str(2 - n)
        assert DURATION.match(answer.headers["x-ratelimit-reset-requests"])
        assert answer.headers["x-ratelimit-limit-tokens"] == "5000"
        assert 0 <= int(answer.headers["x-ratelimit-remaining-tokens"]) < 5000
        assert DURATION.match(answer.headers["x-ratelimit-reset-tokens"])
    assert answers[0].headers["x-ratelimit-remaining-tokens"] == str(5000 - first_reservation)

    assert_rate_limited(refused, "headers", "requests per minute")
    assert refused.error()["param"] == "requests"
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert DURATION.match(refused.headers["x-ratelimit-reset-requests"])
    assert refused.headers["x-ratelimit-limit-tokens"] == "5000"
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) > 0
    assert DURATION.match(refused.headers["x-ratelimit-reset-tokens"])


def fake_stats(shared: Shared) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(shared.fake + "/fake/stats").json()
    return stats


@pytest.mark.parametrize("name", ["early", "early-stream"])
async def test_a_request_sent_before_its_admit_is_cut_off_when_redis_refuses_it(
    shared: Shared, module_redis_url: str, name: str
) -> None:
    """A key far from its limits sends to the worker while the admit is in flight; when another
    replica has used up the key meanwhile (here: Redis's bucket emptied behind the gateway's
    back), the refusal still holds: 429, and the worker's request is cut off, not finished."""
    gateway, key = shared.gateways[0], shared.keys[name]
    stream = name == "early-stream"
    async with httpx.AsyncClient(timeout=30) as client:
        first = await send(client, gateway, key, body())  # waits for its admit: 99 left
        assert first.status == 200, first.text
        redis = Redis.from_url(module_redis_url)
        seconds, micros = redis.time()
        redis.hset(f"gw:{{{name}}}:rpm", mapping={"v": "0", "at": f"{seconds}.{micros:06d}"})
        redis.close()
        before = fake_stats(shared)
        started = time.monotonic()
        # Within a second of the last decision, which left 99 of 100: this one goes early.
        refused = await send(client, gateway, key, body(stream=stream, fake={"stall_first": 20}))
        elapsed = time.monotonic() - started
        for _ in range(100):  # the worker notices the cut within 5 s
            if fake_stats(shared)["aborted"] > before["aborted"]:
                break
            await asyncio.sleep(0.05)
        after_refusal = fake_stats(shared)
        again = await send(client, gateway, key, body(stream=stream))  # near the limit: waits
        after_again = fake_stats(shared)

    assert_rate_limited(refused, name, "requests per minute")
    assert elapsed < 5, elapsed  # cut off, not the worker's 20 s
    assert after_refusal["requests"] == before["requests"] + 1  # it did reach the worker,
    assert after_refusal["aborted"] == before["aborted"] + 1  # which saw it cut off
    assert_rate_limited(again, name, "requests per minute")
    assert after_again["requests"] == after_refusal["requests"]  # this one never reached it
