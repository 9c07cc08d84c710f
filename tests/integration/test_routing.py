"""Health- and load-aware routing, the admission queue and retries, against fake workers (the
failures here - a killed worker, a worker answering 5xx or 503 on demand, a slow one - are the
ones a real engine can't be made to produce at will)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.procs import Proc, free_port, start_fake, start_gateway

CHAT = [{"role": "user", "content": "hi"}]
FAST_HEALTH = {"GATEWAY_HEALTH_INTERVAL": "0.2", "GATEWAY_HEALTH_TIMEOUT": "0.5"}


@dataclass
class Fleet:
    tmp: Path
    fakes: list[Proc]
    urls: list[str]
    ports: list[int]

    def control(self, index: int, **settings: Any) -> None:
        httpx.post(self.urls[index] + "/fake/control", json=settings).raise_for_status()

    def requests(self, index: int) -> int:
        count: int = httpx.get(self.urls[index] + "/fake/stats").json()["requests"]
        return count

    def reset(self) -> None:
        for index in range(len(self.urls)):
            self.control(index, reset=True)

    def restart(self, index: int) -> None:
        self.fakes[index].stop()
        self.fakes[index], _ = start_fake(self.tmp, "m", self.ports[index])

    def models(self, cap: int | None = None) -> str:
        workers = ", ".join(f"{{name: w{i}, url: '{url}'}}" for i, url in enumerate(self.urls))
        extra = f", max_inflight_per_worker: {cap}" if cap else ""
        return f"models:\n  - {{name: m, model: f{extra}, workers: [{workers}]}}\n"


@contextlib.contextmanager
def fleet(tmp: Path, count: int) -> Iterator[Fleet]:
    ports = [free_port() for _ in range(count)]
    started = Fleet(tmp, [], [], ports)
    try:
        for port in ports:
            proc, url = start_fake(tmp, "m", port)
            started.fakes.append(proc)
            started.urls.append(url)
        yield started
    finally:
        for proc in started.fakes:
            proc.stop()


@contextlib.contextmanager
def gateway(tmp: Path, models: str, env: dict[str, str]) -> Iterator[str]:
    # Load and health routing on their own: identical prompts would otherwise follow the
    # cache-aware index to one worker (tests/integration/test_prefix_routing.py turns it on).
    proc, url = start_gateway(tmp, models, {"GATEWAY_PREFIX_ROUTING": "false", **env})
    try:
        yield url
    finally:
        proc.stop()


def ready(url: str) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(url + "/ready").json()
    return doc


def wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def metric(url: str, name: str, labels: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def one_request(client: httpx.AsyncClient, url: str, stream: bool, **extra: Any) -> str:
    """ok | error_event (a stream that ended with the gateway's error event) | http_<status> |
    cut (a stream that ended without [DONE]: must never happen)."""
    body = {"model": "m", "messages": CHAT, "stream": stream, **extra}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            response.json()["error"]["code"]  # always the envelope
            return f"http_{response.status_code}"
        if not stream:
            await response.aread()
            return "ok"
        events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    if not events or events[-1] != "data: [DONE]":
        return "cut"
    return "error_event" if any('"error"' in e for e in events) else "ok"


# --- a worker dies under load, then comes back ----------------------------------------------


async def _load(url: str, stop: asyncio.Event, log: list[tuple[float, str]]) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        turn = 0
        while not stop.is_set():
            turn += 1
            started = time.monotonic()
            stream = turn % 2 == 0
            extra = {"fake": {"chunks": 20, "gap": 0.05}} if stream else {}
            log.append((started, await one_request(client, url, stream, **extra)))


async def test_killed_worker_fails_only_its_in_flight_requests_and_rejoins(
    tmp_path: Path,
) -> None:
    env = {**FAST_HEALTH, "GATEWAY_EJECT_BASE_SECONDS": "1"}
    with fleet(tmp_path, 3) as workers, gateway(tmp_path, workers.models(), env) as url:
        log: list[tuple[float, str]] = []
        stop = asyncio.Event()
        load = [asyncio.create_task(_load(url, stop, log)) for _ in range(6)]
        await asyncio.sleep(1.5)
        killed_at = time.monotonic()
        workers.fakes[0].stop()
        await asyncio.sleep(0.8)
        assert "w0" not in ready(url)["models"]["m"]  # out of rotation
        await asyncio.sleep(1.5)
        workers.restart(0)
        restarted_at = time.monotonic()
        await asyncio.to_thread(wait_for, lambda: workers.requests(0) > 0, 5.0)
        rejoined_after = time.monotonic() - restarted_at
        stop.set()
        await asyncio.gather(*load)
    outcomes = [outcome for _, outcome in log]
    assert "cut" not in outcomes  # never a silent cut
    before = [outcome for started, outcome in log if started < killed_at]
    after = [outcome for started, outcome in log if started >= killed_at + 0.05]
    failed_in_flight = [o for o in before if o != "ok"]
    assert failed_in_flight, "the kill should have hit requests in flight on w0"
    assert set(failed_in_flight) <= {"error_event", "http_502"}  # clean errors, in the envelope
    assert after
    assert set(after) == {"ok"}, after  # retried elsewhere, then w0 out of rotation
    assert rejoined_after < 5


# --- load follows the workers' own state -------------------------------------------------------


async def _burst(url: str, total: int, concurrency: int) -> list[str]:
    async with httpx.AsyncClient(timeout=30) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> str:
            async with gate:
                return await one_request(client, url, stream=False)

        return await asyncio.gather(*(one() for _ in range(total)))


async def test_traffic_shifts_away_from_a_slow_worker_and_a_full_one(tmp_path: Path) -> None:
    with fleet(tmp_path, 3) as workers, gateway(tmp_path, workers.models(), FAST_HEALTH) as url:
        workers.control(0, delay=0.4)
        outcomes = await _burst(url, 60, 6)
        assert set(outcomes) == {"ok"}
        split = [workers.requests(i) for i in range(3)]
        print("split with w0 slow:", split)
        assert split[0] * 3 < min(split[1], split[2])  # the slow one gets far fewer

        workers.control(0, delay=0)
        workers.control(1, waiting=12)  # vLLM reports 12 requests queued: saturated
        await asyncio.sleep(0.6)  # a few probe rounds
        workers.reset()
        assert set(await _burst(url, 30, 4)) == {"ok"}
        split = [workers.requests(i) for i in range(3)]
        print("split with w1 saturated:", split)
        assert split[1] == 0
        assert split[0] > 0
        assert split[2] > 0


# --- the admission queue --------------------------------------------------------------------


async def _post(client: httpx.AsyncClient, url: str, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    body = {"model": "m", "messages": CHAT}
    return await client.post(url + "/v1/chat/completions", json=body, headers=headers)


async def test_queue_bound_holds_exactly_and_leavers_free_their_place(tmp_path: Path) -> None:
    env = {**FAST_HEALTH, "GATEWAY_QUEUE_DEPTH": "4"}
    with fleet(tmp_path, 1) as workers, gateway(tmp_path, workers.models(cap=2), env) as url:
        workers.control(0, delay=1.0)
        async with httpx.AsyncClient(timeout=30) as client:
            started = time.monotonic()
            timed: list[tuple[float, httpx.Response]] = []

            async def one() -> None:
                response = await _post(client, url)
                timed.append((time.monotonic() - started, response))

            await asyncio.gather(*(one() for _ in range(11)))
        ok = [r for _, r in timed if r.status_code == 200]
        refused = [(t, r) for t, r in timed if r.status_code == 503]
        assert len(ok) == 2 + 4
        assert len(refused) == 5
        for elapsed, response in refused:
            assert elapsed < 0.9  # at once, not after a worker finished
            assert response.json()["error"]["code"] == "server_overloaded"
            assert int(response.headers["retry-after"]) >= 1
        assert metric(url, "gateway_queue_rejections_total", 'reason="full"') == 5

        async with httpx.AsyncClient(timeout=30) as client:
            running = [asyncio.create_task(_post(client, url)) for _ in range(2)]
            await asyncio.to_thread(
                wait_for, lambda: ready(url)["workers"]["m/w0"]["inflight"] == 2
            )
            queued = [asyncio.create_task(_post(client, url)) for _ in range(4)]
            await asyncio.to_thread(wait_for, lambda: ready(url)["queued"]["m"] == 4)
            for task in queued[:2]:
                task.cancel()  # those clients hang up while waiting
            await asyncio.to_thread(wait_for, lambda: ready(url)["queued"]["m"] == 2, 2.0)
            later = [asyncio.create_task(_post(client, url)) for _ in range(2)]
            statuses = [r.status_code for r in await asyncio.gather(*running, *queued[2:], *later)]
        assert statuses == [200] * 6  # the two places freed by leavers went to newcomers
        # The gateway's own 503s never count against the worker.
        assert metric(url, "gateway_worker_ejections_total", 'worker="w0"') == 0
        assert ready(url)["models"]["m"] == ["w0"]


async def test_one_key_flooding_the_queue_cannot_starve_another(tmp_path: Path) -> None:
    from gateway.config.keys import hash_key, new_key

    flood_key, other_key = new_key(), new_key()
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        "keys:\n"
        f"  - {{name: flood, sha256: {hash_key(flood_key)}}}\n"
        f"  - {{name: other, sha256: {hash_key(other_key)}}}\n"
    )
    env = {
        **FAST_HEALTH,
        "GATEWAY_AUTH_ENABLED": "true",
        "GATEWAY_KEYS_FILE": str(keys),
        "GATEWAY_QUEUE_DEPTH": "4",
    }
    with fleet(tmp_path, 1) as workers, gateway(tmp_path, workers.models(cap=1), env) as url:
        workers.control(0, delay=0.6)
        finished: list[tuple[str, int]] = []
        async with httpx.AsyncClient(timeout=30) as client:

            async def send(name: str, key: str) -> None:
                response = await _post(client, url, key)
                finished.append((name, response.status_code))

            flood = [asyncio.create_task(send("flood", flood_key)) for _ in range(12)]
            await asyncio.to_thread(wait_for, lambda: ready(url)["queued"]["m"] == 4)
            await asyncio.gather(*(send("other", other_key) for _ in range(2)))
            await asyncio.gather(*flood)
        assert finished.count(("other", 200)) == 2  # the queue was full of flood, yet it got in
        served = [name for name, status in finished if status == 200]
        # Each pushed out the newest flood request, and the queue released the keys in turn.
        assert served == ["flood", "flood", "other", "flood", "other"], served
        assert ("flood", 503) in finished


# --- replicas share what they know ----------------------------------------------------------


def test_two_replicas_agree_on_an_ejection_through_redis(tmp_path: Path, redis_url: str) -> None:
    prefix = f"test-{free_port()}:"
    env = {
        **FAST_HEALTH,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_HEALTH_REDIS_PREFIX": prefix,
        "GATEWAY_EJECT_AFTER_FAILURES": "2",
        "GATEWAY_EJECT_BASE_SECONDS": "30",
    }
    with (
        fleet(tmp_path, 2) as workers,
        gateway(tmp_path, workers.models(), env) as first,
        gateway(tmp_path, workers.models(), env) as second,
    ):
        workers.control(1, status=500)  # w1 fails every completion, its /health stays 200
        for _ in range(6):
            httpx.post(first + "/v1/chat/completions", json={"model": "m", "messages": CHAT})
        assert ready(first)["workers"]["m/w1"]["ejected_for"] > 20
        wait_for(lambda: ready(second)["workers"]["m/w1"]["ejected_for"] > 20, 2.0)
        assert ready(second)["models"]["m"] == ["w0"]
        workers.reset()
        for _ in range(10):
            reply = httpx.post(
                second + "/v1/chat/completions", json={"model": "m", "messages": CHAT}
            )
            assert reply.status_code == 200
        assert workers.requests(1) == 0  # the second replica never tried it
        with gateway(tmp_path, workers.models(), env) as newcomer:  # starts knowing it
            assert ready(newcomer)["models"]["m"] == ["w0"]


# --- retries ------------------------------------------------------------------------------


def test_unreachable_or_overloaded_worker_is_retried_on_another(tmp_path: Path) -> None:
    env = {"GATEWAY_HEALTH_INTERVAL": "0", "GATEWAY_EJECT_AFTER_FAILURES": "0"}
    with fleet(tmp_path, 1) as workers:
        dead = f"http://127.0.0.1:{free_port()}"
        models = (
            "models:\n  - {name: m, model: f, workers: ["
            f"{{name: dead, url: '{dead}'}}, {{name: w0, url: '{workers.urls[0]}'}}]}}\n"
            "  - {name: solo, model: f, workers: ["
            f"{{name: s0, url: '{workers.urls[0]}'}}]}}\n"
        )
        with gateway(tmp_path, models, env) as url:
            for stream in (False, True, False, True):
                body = {"model": "m", "messages": CHAT, "stream": stream}
                assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
            assert metric(url, "gateway_upstream_retries_total", 'model="m"') >= 2
            assert (
                metric(
                    url,
                    "gateway_upstream_errors_total",
                    'kind="unreachable",model="m",worker="dead"',
                )
                >= 2
            )

            workers.control(0, status=503)  # the only worker of `solo` is overloaded
            body = {"model": "solo", "messages": CHAT}
            reply = httpx.post(url + "/v1/chat/completions", json=body)
            assert reply.status_code == 503
            assert reply.json()["error"]["code"] == "upstream_overloaded"


def test_a_worker_closing_connections_without_answering_is_retried_on_another(
    tmp_path: Path,
) -> None:
    """A vLLM server going down still accepts connections, then closes them before answering:
    nothing reached the client, so the request moves to another worker instead of failing."""
    env = {"GATEWAY_HEALTH_INTERVAL": "0", "GATEWAY_EJECT_AFTER_FAILURES": "0"}
    with fleet(tmp_path, 2) as workers:
        models = (
            "models:\n  - {name: m, model: f, workers: ["
            f"{{name: w0, url: '{workers.urls[0]}'}}, {{name: w1, url: '{workers.urls[1]}'}}]}}\n"
            "  - {name: solo, model: f, workers: ["
            f"{{name: s0, url: '{workers.urls[0]}'}}]}}\n"
        )
        with gateway(tmp_path, models, env) as url:
            workers.control(0, drop=True)
            for stream in (False, True, False, True, False, True):
                body = {"model": "m", "messages": CHAT, "stream": stream}
                assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
            assert workers.requests(0) >= 1  # it was tried, and dropped them
            assert workers.requests(1) == 6  # every one was answered by the other
            assert (
                metric(
                    url,
                    "gateway_upstream_errors_total",
                    'kind="unreachable",model="m",worker="w0"',
                )
                >= 1
            )
            reply = httpx.post(
                url + "/v1/chat/completions", json={"model": "solo", "messages": CHAT}
            )
            assert reply.status_code == 502  # no other worker: an honest error, not a hang
            assert reply.json()["error"]["code"] == "upstream_unavailable"
            assert "without answering" in reply.json()["error"]["message"]


def test_a_stream_that_broke_after_its_start_is_never_retried(tmp_path: Path) -> None:
    with fleet(tmp_path, 2) as workers, gateway(tmp_path, workers.models(), FAST_HEALTH) as url:
        body = {"model": "m", "messages": CHAT, "stream": True, "fake": {"cut_after": 2}}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert orjson.loads(events[-2][6:])["error"]["code"] == "upstream_error"
        assert workers.requests(0) + workers.requests(1) == 1


def test_no_healthy_worker_is_503_with_retry_after(tmp_path: Path) -> None:
    with fleet(tmp_path, 1) as workers, gateway(tmp_path, workers.models(), FAST_HEALTH) as url:
        workers.control(0, health=503)
        wait_for(lambda: ready(url)["models"]["m"] == [], 2.0)
        reply = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": CHAT})
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "no_healthy_backend"
        assert int(reply.headers["retry-after"]) >= 1
        assert workers.requests(0) == 0
        workers.control(0, health=200)
        wait_for(lambda: ready(url)["models"]["m"] == ["w0"], 2.0)


def test_a_session_stays_on_one_worker(tmp_path: Path) -> None:
    with fleet(tmp_path, 3) as workers, gateway(tmp_path, workers.models(), FAST_HEALTH) as url:
        for session in ("alice", "bob", "carol", "dave"):
            workers.reset()
            for _ in range(6):
                reply = httpx.post(
                    url + "/v1/chat/completions",
                    json={"model": "m", "messages": CHAT},
                    headers={"x-session-id": session},
                )
                assert reply.status_code == 200
            counts = sorted(workers.requests(i) for i in range(3))
            assert counts == [0, 0, 6], (session, counts)  # all six on one worker
        workers.reset()
        for _ in range(6):  # the OpenAI `user` field works the same way
            body = {"model": "m", "messages": CHAT, "user": "erin"}
            assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
        assert sorted(workers.requests(i) for i in range(3)) == [0, 0, 6]
