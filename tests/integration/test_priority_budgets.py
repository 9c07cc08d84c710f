"""Sharing a fleet between teams, end to end (real sockets, fake workers, real Redis): priority
classes in the admission queue and into vLLM's body, token budgets exact across two gateway
replicas and surviving a restart, and each key's usage (GET /v1/usage, Prometheus counters).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.api.validation import parse_request
from gateway.config.keys import hash_key, new_key
from gateway.limits.reserve import reserve_tokens
from gateway.request import Endpoint
from tests.procs import Proc, start_fake, start_gateway

BUDGET = 2000  # tokens per day of key "nightly"
PROMPT_TOKENS = 40  # what the budget model's fake worker reports per request (+1 completion)
AGING = 0.5

KEYS: dict[str, dict[str, Any]] = {
    "ui": {"priority": "interactive"},
    "etl": {},  # standard
    "bulk": {"priority": "batch"},
    "nightly": {"priority": "batch", "tokens_per_day": BUDGET},
    "tiny": {"tokens_per_month": 50},
}


@dataclass
class Fleet:
    tmp: Path
    models: str
    env: dict[str, str]
    fakes: dict[str, str]  # model -> fake worker url
    keys: dict[str, str]
    gateways: list[str] = field(default_factory=list)
    procs: dict[str, Proc] = field(default_factory=dict)  # gateway url -> its process

    def auth(self, name: str, **headers: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keys[name]}", **headers}

    def start(self) -> str:
        proc, url = start_gateway(self.tmp, self.models, self.env)
        self.procs[url] = proc
        self.gateways.append(url)
        return url

    def stop(self, url: str) -> None:
        self.procs.pop(url).stop()
        self.gateways.remove(url)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, module_redis_url: str) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("priority-budgets")
    keys = {name: new_key() for name in KEYS}
    entries = [{"name": n, "sha256": hash_key(keys[n]), **v} for n, v in KEYS.items()]
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": entries}))
    procs: list[Proc] = []
    fakes: dict[str, str] = {}
    fleet: Fleet | None = None
    try:
        for model in ("fake-a", "fake-p", "fake-b"):
            proc, url = start_fake(tmp, model)
            procs.append(proc)
            fakes[model] = url
        httpx.post(fakes["fake-b"] + "/fake/control", json={"prompt_tokens": PROMPT_TOKENS})
        models = yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "fake-a",  # one request at a time: the rest queue
                        "model": "f",
                        "max_inflight_per_worker": 1,
                        "workers": [{"name": "wa", "url": fakes["fake-a"]}],
                    },
                    {
                        "name": "fake-p",
                        "model": "f",
                        "scheduling_policy": "priority",
                        "workers": [{"name": "wp", "url": fakes["fake-p"]}],
                    },
                    {
                        "name": "fake-b",
                        "model": "f",
                        "workers": [{"name": "wb", "url": fakes["fake-b"]}],
                    },
                ]
            }
        )
        env = {
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_KEYS_FILE": str(keys_file),
            "GATEWAY_REDIS_URL": module_redis_url,
            "GATEWAY_REDIS_TIMEOUT": "2",
            "GATEWAY_QUEUE_AGING_SECONDS": str(AGING),
        }
        fleet = Fleet(tmp, models, env, fakes, keys)
        fleet.start()
        fleet.start()
        yield fleet
    finally:
        for url in list(fleet.gateways if fleet is not None else []):
            fleet.stop(url)  # type: ignore[union-attr]
        for proc in reversed(procs):
            proc.stop()


def chat(model: str, **fields: Any) -> bytes:
    doc = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(doc).encode()


def metric(gateway: str, name: str, labels: str = "") -> float:
    text = httpx.get(gateway + "/metrics").text
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.MULTILINE)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


# --- priority classes ---------------------------------------------------------------------------


async def test_under_saturation_interactive_goes_first_and_batch_still_progresses(
    fleet: Fleet,
) -> None:
    """One worker slot, four interactive clients keeping its queue full for 3 s, and three batch
    requests waiting: none of the batch requests is served while it is young, and aging serves
    them all long before the interactive load ends."""
    gateway = fleet.gateways[0]
    payload = chat("fake-a", fake={"stall_first": 0.05})
    done: list[tuple[str, float]] = []
    started = time.monotonic()
    end = started + 3.0

    async def post(client: httpx.AsyncClient, name: str) -> None:
        response = await client.post(
            gateway + "/v1/chat/completions", content=payload, headers=fleet.auth(name)
        )
        assert response.status_code == 200, response.text
        done.append((name, time.monotonic() - started))

    async def interactive(client: httpx.AsyncClient) -> None:
        while time.monotonic() < end:
            await post(client, "ui")

    async with httpx.AsyncClient(timeout=30) as client:
        ui = [asyncio.create_task(interactive(client)) for _ in range(4)]
        await asyncio.sleep(0.3)  # the queue holds interactive waiters now
        queued_at = time.monotonic() - started
        batch = [asyncio.create_task(post(client, "bulk")) for _ in range(3)]
        await asyncio.gather(*ui, *batch)

    firsts = [t for name, t in done if name == "bulk"]
    assert len(firsts) == 3
    # young batch waiters lose to interactive ones: not before they aged past interactive's
    # class (batch ties it after 2 x aging, goes first after 3 x aging)
    assert min(firsts) - queued_at >= 2 * AGING, done
    ui_before = [t for name, t in done if name == "ui" and queued_at < t < min(firsts)]
    assert len(ui_before) >= 8, done
    # and they all made it while interactive traffic was still queueing
    assert max(firsts) < 3.0, done


def test_priority_reaches_the_engine_lowered_by_the_client_never_raised(fleet: Fleet) -> None:
    gateway = fleet.gateways[0]
    stats = fleet.fakes["fake-p"] + "/fake/stats"
    cases = [("ui", None, 0), ("etl", None, 1), ("ui", "batch", 2), ("bulk", "interactive", 2)]
    for name, asked, expected in cases:
        headers = fleet.auth(name, **({"x-priority": asked} if asked else {}))
        response = httpx.post(
            gateway + "/v1/chat/completions", content=chat("fake-p"), headers=headers
        )
        assert response.status_code == 200, response.text
        assert httpx.get(stats).json()["last_body"]["priority"] == expected, (name, asked)
    # a model whose workers schedule first-come-first-served gets no `priority`
    response = httpx.post(
        gateway + "/v1/chat/completions", content=chat("fake-a"), headers=fleet.auth("ui")
    )
    assert response.status_code == 200
    assert "priority" not in httpx.get(fleet.fakes["fake-a"] + "/fake/stats").json()["last_body"]
    bad = httpx.post(
        gateway + "/v1/chat/completions",
        content=chat("fake-p"),
        headers=fleet.auth("ui", **{"x-priority": "asap"}),
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "x-priority"


# --- token budgets and usage --------------------------------------------------------------------


async def test_a_budget_is_exact_across_two_replicas_and_usage_matches(fleet: Fleet) -> None:
    payload = chat("fake-b", max_tokens=50)
    reservation = reserve_tokens(parse_request(Endpoint.CHAT, payload), 1024)
    used_each = PROMPT_TOKENS + 1
    assert reservation >= used_each  # the fake never uses more than reserved

    answers: list[httpx.Response] = []
    async with httpx.AsyncClient(timeout=30) as client:
        semaphore = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            async with semaphore:
                answers.append(
                    await client.post(
                        fleet.gateways[i % 2] + "/v1/chat/completions",
                        content=payload,
                        headers=fleet.auth("nightly"),
                    )
                )

        await asyncio.gather(*(one(i) for i in range(3 * BUDGET // used_each)))
        # whatever in-flight reservations refused, sequential requests now find the rest
        while True:
            answer = await client.post(
                fleet.gateways[len(answers) % 2] + "/v1/chat/completions",
                content=payload,
                headers=fleet.auth("nightly"),
            )
            answers.append(answer)
            if answer.status_code != 200:
                break

    admitted = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    used = sum(a.json()["usage"]["total_tokens"] for a in admitted)
    assert BUDGET - reservation < used <= BUDGET, (used, len(admitted))
    for answer in admitted:
        assert answer.headers["x-ratelimit-limit-tokens-day"] == str(BUDGET)
        assert 0 <= int(answer.headers["x-ratelimit-remaining-tokens-day"]) < BUDGET
    for answer in refused:
        assert answer.status_code == 429, answer.text
        error = answer.json()["error"]
        assert (error["code"], error["type"]) == ("insufficient_quota", "insufficient_quota")
        assert "nightly" in error["message"]
        assert "resets at" in error["message"]
        assert int(answer.headers["retry-after"]) >= 1
        assert int(answer.headers["x-ratelimit-remaining-tokens-day"]) < reservation

    check_usage(fleet, admitted, used, len(answers))


def check_usage(fleet: Fleet, admitted: list[httpx.Response], used: int, answered: int) -> None:
    for gateway in fleet.gateways:  # either replica reports the key's whole usage
        usage = httpx.get(gateway + "/v1/usage", headers=fleet.auth("nightly")).json()
        assert usage["key"] == "nightly"
        for period in ("day", "month"):
            assert usage[period]["requests"] == len(admitted)
            assert usage[period]["prompt_tokens"] == PROMPT_TOKENS * len(admitted)
            assert usage[period]["total_tokens"] == used
            assert usage[period]["models"]["fake-b"]["total_tokens"] == used
        assert usage["day"]["budget"] == {
            "tokens": BUDGET,
            "charged_tokens": used,
            "remaining_tokens": BUDGET - used,
        }
        assert usage["month"]["budget"] is None
        assert usage["day"]["resets_at"].endswith("T00:00:00Z")

    labels = '{key="nightly",model="fake-b"}'
    counted = sum(metric(g, "gateway_key_prompt_tokens_total", labels) for g in fleet.gateways)
    assert counted == PROMPT_TOKENS * len(admitted)
    requests = sum(metric(g, "gateway_key_requests_total", labels) for g in fleet.gateways)
    assert requests == len(admitted)  # refused by a limit: counted in ratelimit_rejections
    assert answered > len(admitted)
    ratio = metric(
        fleet.gateways[0], "gateway_key_budget_used_ratio", '{key="nightly",period="day"}'
    )
    assert 0.9 < ratio <= 1.0


def test_a_request_larger_than_the_whole_budget_says_so(fleet: Fleet) -> None:
    response = httpx.post(
        fleet.gateways[1] + "/v1/chat/completions",
        content=chat("fake-b", max_tokens=500),
        headers=fleet.auth("tiny"),
    )
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "per month" in error["message"]
    assert "max_tokens" in error["message"]


def test_usage_needs_the_keys_own_authentication(fleet: Fleet) -> None:
    for headers in ({}, {"authorization": "Bearer sk-gw-nope"}):
        response = httpx.get(fleet.gateways[0] + "/v1/usage", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    fresh = httpx.get(fleet.gateways[0] + "/v1/usage", headers=fleet.auth("etl")).json()
    assert fresh["key"] == "etl"
    assert fresh["day"]["budget"] is None


def test_budgets_and_usage_survive_a_gateway_restart(fleet: Fleet) -> None:
    before = httpx.get(fleet.gateways[0] + "/v1/usage", headers=fleet.auth("nightly")).json()
    assert before["day"]["requests"] > 0  # after the budget test
    for url in list(fleet.gateways):
        fleet.stop(url)
    gateway = fleet.start()
    after = httpx.get(gateway + "/v1/usage", headers=fleet.auth("nightly")).json()
    assert after["day"] == before["day"]
    assert after["month"] == before["month"]
    response = httpx.post(
        gateway + "/v1/chat/completions",
        content=chat("fake-b", max_tokens=50),
        headers=fleet.auth("nightly"),
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"
