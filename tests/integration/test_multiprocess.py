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


def sample(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", text, re.M)
    assert found, f"{series} missing"
    return float(found.group(1))


def test_counters_sum_and_gauges_merge_across_processes(two_process_gateway: str) -> None:
    body = {"model": "fake-a", "messages": [{"role": "user", "content": "hi"}]}
    before = httpx.get(two_process_gateway + "/metrics").text
    for _ in range(20):
        with httpx.Client() as client:
            client.post(two_process_gateway + "/v1/chat/completions", json=body)
    after = httpx.get(two_process_gateway + "/metrics").text
    prompt = 'gateway_prompt_tokens_total{model="fake-a"}'
    completion = 'gateway_completion_tokens_total{model="fake-a"}'
    assert sample(after, prompt) - sample(before, prompt) == 20 * 3  # the fake's usage
    assert sample(after, completion) - sample(before, completion) == 20 * 1
    # Gauges: each process's own value, merged - health by max, in-flight and queue by sum.
    assert sample(after, 'gateway_worker_healthy{model="fake-a",worker="w0"}') == 1
    assert sample(after, 'gateway_worker_inflight{model="fake-a",worker="w0"}') == 0
    assert sample(after, 'gateway_queue_depth{model="fake-a"}') == 0
