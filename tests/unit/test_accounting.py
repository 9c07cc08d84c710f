"""Asking vLLM for a stream's usage: the body stays valid JSON and keeps every field."""

from __future__ import annotations

import orjson
import pytest

from gateway.api.validation import parse_request
from gateway.relay.amend import body_asking_usage
from gateway.request import Endpoint


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}',
        b'  {"model": "m", "stream": true, "messages": [{"role": "user", "content": "{"}]}',
        b'{"model":"m","stream":true,"stream_options":null,"messages":[{"role":"user","content":"x"}]}',
        b'{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":false},'
        b'"messages":[{"role":"user","content":"x"}]}',
    ],
)
def test_stream_body_asks_for_usage_and_keeps_everything_else(body: bytes) -> None:
    view = parse_request(Endpoint.CHAT, body)
    amended = orjson.loads(body_asking_usage(view))
    assert amended["stream_options"]["include_usage"] is True
    original = orjson.loads(body)
    for key, value in original.items():
        if key != "stream_options":
            assert amended[key] == value
    if isinstance(original.get("stream_options"), dict):
        assert amended["stream_options"]["continuous_usage_stats"] is False


def test_a_body_that_already_asks_is_sent_as_it_came() -> None:
    body = b'{"model":"m","stream":true,"stream_options":{"include_usage":true},"prompt":"x"}'
    assert body_asking_usage(parse_request(Endpoint.COMPLETIONS, body)) is body
