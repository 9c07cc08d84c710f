"""Several gateway processes on one port: every request is answered and counted once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.procs import one_worker_models, start_fake, start_gateway


@pytest.fixture(scope="module")
def two_process_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("multiproc")
    fake, fake_url = start_fake(tmp, "fake-a")
    try:
        gateway, url = start_gateway(tmp, one_worker_models(fake_url), {"GATEWAY_PROCESSES": "2"})
        try:
            yield url
        finally:
            gateway.stop()
    finally:
        fake.stop()


def test_requests_spread_over_processes_are_all_counted(two_process_gateway: str) -> None:
    body = {"model": "fake-a", "messages": [{"role": "user", "content": "hi"}]}

    def one(_: int) -> int:
        with httpx.Client() as client:  # a new connection each: the kernel spreads them
            return client.post(two_process_gateway + "/v1/chat/completions", json=body).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses == [200] * 60
    # Whichever process answers /metrics (each GET on a new connection), it reports all 60.
    for _ in range(10):
        text = httpx.get(two_process_gateway + "/metrics").text
        found = re.search(
            r'^gateway_requests_total\{endpoint="/v1/chat/completions",model="fake-a",'
            r'status="200"\} ([0-9.]+)$',
            text,
            re.M,
        )
        assert found, text
        assert float(found.group(1)) == 60
