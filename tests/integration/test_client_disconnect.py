"""A client that goes away makes the gateway close the worker's request at once (fake worker).

The fake worker notices a closed connection the way vLLM does and counts it as aborted.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.integration.conftest import FakeStack

CHAT = [{"role": "user", "content": "hi"}]


def wait_for_abort(stack: FakeStack, aborted_before: int) -> float:
    """Seconds until the worker saw one more aborted request and none is running."""
    started = time.monotonic()
    while time.monotonic() - started < 5:
        stats = stack.stats()
        if stats["aborted"] > aborted_before and stats["active"] == 0:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"worker never saw the abort: {stack.stats()}")


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_first_token_aborts_the_worker_request(
    patient: FakeStack, stream: bool
) -> None:
    before = patient.stats()["aborted"]
    body = {"model": "fake-a", "messages": CHAT, "stream": stream, "fake": {"stall_first": 30}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(patient.gateway + "/v1/chat/completions", json=body, timeout=0.5)
    assert wait_for_abort(patient, before) < 1.0


def test_client_leaving_mid_stream_aborts_the_worker_request(patient: FakeStack) -> None:
    before = patient.stats()["aborted"]
    body = {
        "model": "fake-a",
        "messages": CHAT,
        "stream": True,
        "fake": {"chunks": 100, "gap": 0.2},
    }
    with httpx.stream("POST", patient.gateway + "/v1/chat/completions", json=body) as response:
        chunks = response.iter_bytes()
        assert next(chunks).startswith(b"data: ")
    # leaving the `with` closes the client's connection after one event
    assert wait_for_abort(patient, before) < 1.0


def test_client_leaving_is_counted_as_499(patient: FakeStack) -> None:
    body = {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"stall_first": 30}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(patient.gateway + "/v1/chat/completions", json=body, timeout=0.3)
    time.sleep(0.3)
    text = httpx.get(patient.gateway + "/metrics").text
    assert 'endpoint="/v1/chat/completions",model="fake-a",status="499"' in text
