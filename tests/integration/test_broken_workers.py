"""Workers that break the protocol get 502 upstream_error, never a relayed 200: a non-streaming
answer that is not a JSON object or is over GATEWAY_MAX_RESPONSE_BYTES, stream bytes that are
not SSE events, and a stream event over GATEWAY_MAX_EVENT_BYTES. Counted by kind."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import NO_HEALTH
from tests.integration.test_routing import metric
from tests.procs import one_worker_models, start_fake, start_gateway

LIMITS = {"GATEWAY_MAX_RESPONSE_BYTES": "100000", "GATEWAY_MAX_EVENT_BYTES": "10000"}
CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("broken")
    fake, fake_url = start_fake(tmp, "fake-a")
    try:
        gateway, url = start_gateway(tmp, one_worker_models(fake_url), {**NO_HEALTH, **LIMITS})
        try:
            yield url
        finally:
            gateway.stop()
    finally:
        fake.stop()


def post(url: str, script: dict[str, Any], stream: bool = False) -> httpx.Response:
    body = {"model": "fake-a", "messages": CHAT, "stream": stream, "fake": script}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10)


def invalid(url: str, kind: str) -> float:
    return metric(url, "gateway_upstream_invalid_total", f'kind="{kind}"')


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        ({"raw": "this is not json"}, "not_json"),
        ({"raw": "[1, 2, 3]"}, "not_json"),  # JSON, but not an object
        ({"raw": "\x00\x01\x02 binary"}, "not_json"),
        ({"pad": 200_000}, "too_large"),
    ],
    ids=["text", "array", "binary", "oversized"],
)
def test_a_broken_non_streaming_answer_is_a_502(
    broken: str, script: dict[str, Any], kind: str
) -> None:
    before = invalid(broken, kind)
    reply = post(broken, script)
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "upstream_error"
    assert invalid(broken, kind) == before + 1


def test_a_valid_answer_just_under_the_limit_still_passes(broken: str) -> None:
    assert post(broken, {"pad": 90_000}).status_code == 200


def test_garbage_instead_of_the_first_event_is_a_502(broken: str) -> None:
    before = invalid(broken, "not_sse")
    reply = post(broken, {"junk_after": 0}, stream=True)
    assert reply.status_code == 502
    assert reply.json()["error"]["code"] == "upstream_error"
    assert invalid(broken, "not_sse") == before + 1


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        ({"junk_after": 1, "gap": 0.2}, "not_sse"),
        ({"big_event_after": 1, "pad": 50_000, "gap": 0.2}, "event_too_large"),
    ],
    ids=["garbage", "oversized-event"],
)
def test_a_stream_broken_after_its_start_ends_with_an_error_event(
    broken: str, script: dict[str, Any], kind: str
) -> None:
    before = invalid(broken, kind)
    reply = post(broken, script, stream=True)
    assert reply.status_code == 200  # the answer had begun
    events = [e for e in reply.content.split(b"\n\n") if e]
    assert events[0].startswith(b"data: {")  # the good first event, relayed as it came
    assert b'"code":"upstream_error"' in events[-2]
    assert events[-1] == b"data: [DONE]"
    assert all(b"\x00" not in e and b"yyyy" not in e for e in events)  # nothing of the junk
    assert invalid(broken, kind) == before + 1
