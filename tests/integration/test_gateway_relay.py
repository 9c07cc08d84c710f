"""Relay behaviour against the fake worker: pass-through, request ids, SSE integrity, metrics."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.conftest import FakeStack
from tests.procs import one_worker_models, start_fake, start_gateway

CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def stream_events(stack: FakeStack, body: dict[str, object]) -> list[bytes]:
    with httpx.stream(
        "POST", stack.gateway + "/v1/chat/completions", json=body, timeout=10
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read()
    assert raw.endswith(b"\n\n")
    return [event for event in raw.split(b"\n\n") if event]


def test_unknown_fields_reach_the_worker_untouched(strict: FakeStack) -> None:
    body = {
        "model": "fake-a",
        "messages": CHAT,
        "top_k": 5,
        "min_p": 0.1,
        "structured_outputs": {"choice": ["red", "blue"]},
        "chat_template_kwargs": {"x": 1},
    }
    response = httpx.post(strict.gateway + "/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert strict.stats()["last_body"] == body


def test_request_id_is_forwarded_and_returned(strict: FakeStack) -> None:
    body = {"model": "fake-a", "messages": CHAT}
    given = httpx.post(
        strict.gateway + "/v1/chat/completions", json=body, headers={"x-request-id": "client-id-42"}
    )
    assert given.headers["x-request-id"] == "client-id-42"
    assert strict.stats()["last_headers"]["x-request-id"] == "client-id-42"
    fresh = httpx.post(strict.gateway + "/v1/chat/completions", json=body)
    generated = fresh.headers["x-request-id"]
    assert len(generated) == 32
    assert strict.stats()["last_headers"]["x-request-id"] == generated


def test_clients_authorization_header_is_not_forwarded(strict: FakeStack) -> None:
    body = {"model": "fake-a", "messages": CHAT}
    httpx.post(
        strict.gateway + "/v1/chat/completions",
        json=body,
        headers={"authorization": "Bearer sk-secret"},
    )
    assert "authorization" not in strict.stats()["last_headers"]


def test_stream_relays_events_in_order_and_ends_with_done(strict: FakeStack) -> None:
    events = stream_events(
        strict, {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"chunks": 6}}
    )
    assert events[-1] == b"data: [DONE]"
    contents = [orjson.loads(e[6:])["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert contents == [f"t{i} " for i in range(6)]


def test_stream_events_arrive_while_the_worker_is_still_generating(strict: FakeStack) -> None:
    body = {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"chunks": 3, "gap": 0.5}}
    with httpx.stream("POST", strict.gateway + "/v1/chat/completions", json=body) as response:
        chunks = response.iter_bytes()  # keep a reference: dropping it closes the response
        assert next(chunks).startswith(b"data: {")
        assert strict.stats()["active"] == 1  # the worker has not finished: nothing was buffered
        rest = b"".join(chunks)
    assert rest.endswith(b"data: [DONE]\n\n")


def test_stream_cut_mid_way_ends_with_error_event(strict: FakeStack) -> None:
    events = stream_events(
        strict, {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"cut_after": 2}}
    )
    assert len(events) == 4
    error = orjson.loads(events[2][6:])["error"]
    assert error["code"] == "upstream_error"
    assert events[3] == b"data: [DONE]"


def test_stream_stall_mid_way_ends_with_timeout_event(strict: FakeStack) -> None:
    events = stream_events(
        strict, {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"stall_after": 2}}
    )
    assert len(events) == 4
    assert orjson.loads(events[2][6:])["error"]["code"] == "upstream_timeout"
    assert events[3] == b"data: [DONE]"


def test_the_idle_deadline_holds_when_shorter_than_the_first_byte_one(tmp_path: Path) -> None:
    """A long wait for the first token (queueing, prefill) and a short one between tokens: a
    stream that stalls after its start ends at the idle deadline, not the first-byte one."""
    fake, fake_url = start_fake(tmp_path, "fake-a")
    env = {"GATEWAY_FIRST_BYTE_TIMEOUT": "20", "GATEWAY_IDLE_TIMEOUT": "0.5"}
    try:
        gateway, url = start_gateway(tmp_path, one_worker_models(fake_url), env)
        try:
            body = {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"stall_after": 2}}
            started = time.monotonic()
            events = stream_events(FakeStack(url, fake_url, gateway.log), body)
            assert time.monotonic() - started < 10  # 20 s if the first-byte deadline held
            assert orjson.loads(events[2][6:])["error"]["code"] == "upstream_timeout"
        finally:
            gateway.stop()
    finally:
        fake.stop()


def test_worker_error_event_mid_stream_is_relayed_once(strict: FakeStack) -> None:
    events = stream_events(
        strict,
        {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"inband_error_after": 2}},
    )
    assert len(events) == 4
    assert b'"error"' in events[2]
    assert events.count(b"data: [DONE]") == 1


def test_worker_error_before_first_token_becomes_an_http_error(strict: FakeStack) -> None:
    body = {"model": "fake-a", "messages": CHAT, "stream": True, "fake": {"inband_error_after": 0}}
    response = httpx.post(strict.gateway + "/v1/chat/completions", json=body)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


def test_sdk_raises_on_the_error_event_instead_of_ending_silently(strict: FakeStack) -> None:
    client = openai.OpenAI(base_url=strict.gateway + "/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(
        model="fake-a",
        messages=CHAT,
        stream=True,
        extra_body={"fake": {"cut_after": 2}},
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["t0 ", "t1 "]


def test_metrics_count_requests_by_model_endpoint_and_status(strict: FakeStack) -> None:
    httpx.post(strict.gateway + "/v1/chat/completions", json={"model": "fake-a", "messages": CHAT})
    text = httpx.get(strict.gateway + "/metrics").text
    assert (
        'gateway_requests_total{endpoint="/v1/chat/completions",model="fake-a",status="200"}'
        in text
    )
    assert "gateway_request_duration_seconds_bucket" in text


def test_ready_names_models_without_a_worker(strict: FakeStack) -> None:
    response = httpx.get(strict.gateway + "/ready")
    assert response.status_code == 503
    assert response.json()["models"] == {"blackhole": [], "fake-a": ["fake-0"], "dead": []}


def test_models_lists_every_configured_model(strict: FakeStack) -> None:
    client = openai.OpenAI(base_url=strict.gateway + "/v1", api_key="x", max_retries=0)
    assert sorted(m.id for m in client.models.list()) == ["blackhole", "dead", "fake-a"]
