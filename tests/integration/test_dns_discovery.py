"""Workers found by DNS, under load: a DNS server on loopback (tests/dns_server.py) answers for
the name a models.yaml `dns` worker gives, and its answers change while requests stream through
the gateway to fake workers on three loopback addresses sharing one port. Added addresses take
traffic, a removed one gets no new request and its streams in flight finish, a DNS outage keeps
the last known set (logged once): no request fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.dns_server import DnsServer
from tests.integration.test_routing import one_request
from tests.procs import Proc, free_port, start_fake, start_gateway

NAME = "vllm.test"
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@contextlib.contextmanager
def fakes(tmp: Path, port: int) -> Iterator[list[str]]:
    started: list[Proc] = []
    try:
        urls = []
        for host in HOSTS:
            proc, url = start_fake(tmp, "m", port, host=host)
            started.append(proc)
            urls.append(url)
        yield urls
    finally:
        for proc in started:
            proc.stop()


def requests_seen(url: str) -> int:
    seen: int = httpx.get(url + "/fake/stats").json()["requests"]
    return seen


def ready_workers(gateway: str) -> list[str]:
    doc = httpx.get(gateway + "/ready").json()
    return sorted(doc["models"].get("m", []))


async def until(check: Callable[[], bool], seconds: float, what: str) -> float:
    start = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


async def test_workers_follow_dns_answers_under_load(tmp_path: Path) -> None:
    port = free_port()
    with DnsServer() as dns_server, fakes(tmp_path, port) as urls:
        dns_server.set(NAME, HOSTS[:2])
        worker = f"{{name: v, dns: '{NAME}:{port}'}}"
        models = f"models:\n  - {{name: m, model: f, workers: [{worker}]}}\n"
        env = {
            "GATEWAY_DNS_NAMESERVERS": json.dumps([dns_server.nameserver]),
            "GATEWAY_DNS_INTERVAL": "0.2",
            "GATEWAY_DNS_TIMEOUT": "2",
            "GATEWAY_HEALTH_INTERVAL": "0.2",
            "GATEWAY_CONFIG_RELOAD_INTERVAL": "0",
            "GATEWAY_PREFIX_ROUTING": "false",  # one prompt everywhere: spread by load
        }
        gateway, url = start_gateway(tmp_path, models, env)
        names = [f"v@{host}:{port}" for host in HOSTS]
        outcomes: list[str] = []
        stop = asyncio.Event()

        async def load() -> None:
            async with httpx.AsyncClient(timeout=20) as client:
                while not stop.is_set():
                    script = {"chunks": 6, "gap": 0.05}
                    outcomes.append(await one_request(client, url, True, fake=script))

        try:
            await until(lambda: ready_workers(url) == names[:2], 5, "the first two addresses")
            tasks = [asyncio.create_task(load()) for _ in range(8)]
            await asyncio.sleep(0.5)

            dns_server.set(NAME, HOSTS)  # scale up: a third address
            await until(lambda: requests_seen(urls[2]) > 0, 5, "the new address takes traffic")

            dns_server.set(NAME, HOSTS[1:])  # scale down: the first address leaves
            await until(lambda: ready_workers(url) == names[1:], 5, "the first address dropped")
            await asyncio.sleep(0.5)  # its streams in flight end (0.3 s each)
            before = await asyncio.to_thread(requests_seen, urls[0])
            await asyncio.sleep(0.5)
            assert await asyncio.to_thread(requests_seen, urls[0]) == before  # none sent there
            metrics = (await asyncio.to_thread(httpx.get, url + "/metrics")).text
            assert f'gateway_worker_healthy{{model="m",worker="{names[2]}"}} 1.0' in metrics
            assert f'worker="{names[0]}"' not in metrics.split("gateway_worker_healthy")[1]

            dns_server.fail()  # an outage: the last known set stays
            await asyncio.sleep(1.0)
            assert ready_workers(url) == names[1:]
            served = await asyncio.to_thread(requests_seen, urls[1])
            await asyncio.sleep(0.3)
            assert await asyncio.to_thread(requests_seen, urls[1]) > served
            dns_server.fail(False)
            dns_server.set(NAME, HOSTS)  # back, with the first address again
            await until(lambda: ready_workers(url) == names, 5, "the first address back")
            dns_server.set(NAME, HOSTS[:1])  # then only it
            await until(lambda: ready_workers(url) == names[:1], 5, "only the first address")
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            gateway.stop()

        assert len(outcomes) > 100
        assert set(outcomes) == {"ok"}, {o: outcomes.count(o) for o in set(outcomes)}
        # Each incident is logged once, and its end once: the outage above, and on a loaded
        # host maybe a query that timed out on its own.
        lines = [line for line in gateway.output().splitlines() if "DNS resolution of " in line]
        kinds = ["works again" in line for line in lines]
        assert kinds[:2] == [False, True]
        assert kinds == [False, True] * (len(kinds) // 2)
