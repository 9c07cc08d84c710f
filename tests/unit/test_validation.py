"""Request views: only what the gateway needs is modelled; the body bytes stay untouched."""

from __future__ import annotations

import orjson
import pytest

from gateway.api.validation import parse_request
from gateway.errors import InvalidJSON, InvalidRequest, MissingParameter
from gateway.request import Endpoint


def test_chat_view_keeps_the_original_bytes() -> None:
    raw = b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": 3}'
    view = parse_request(Endpoint.CHAT, raw)
    assert (view.model, view.stream, view.body) == ("m", False, raw)


def test_stream_flag_is_read() -> None:
    raw = orjson.dumps({"model": "m", "prompt": "x", "stream": True})
    assert parse_request(Endpoint.COMPLETIONS, raw).stream is True


def test_completions_accept_prompt_embeds_instead_of_prompt() -> None:
    raw = orjson.dumps({"model": "m", "prompt_embeds": "base64"})
    assert parse_request(Endpoint.COMPLETIONS, raw).model == "m"


@pytest.mark.parametrize(
    ("doc", "param"),
    [
        ({"model": "m", "prompt": 5}, "prompt"),
        ({"model": "m", "prompt": "x", "n": 0}, "n"),
        ({"model": "m", "prompt": "x", "max_completion_tokens": True}, "max_completion_tokens"),
        (
            {"model": "m", "prompt": "x", "stream_options": {"include_usage": "yes"}},
            "stream_options.include_usage",
        ),
        ({"model": "", "prompt": "x"}, "model"),
    ],
)
def test_wrong_fields_name_their_param(doc: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(Endpoint.COMPLETIONS, orjson.dumps(doc))
    assert caught.value.param == param
    assert caught.value.status == 400


def test_chat_message_without_role_is_missing_parameter() -> None:
    raw = orjson.dumps({"model": "m", "messages": [{"content": "x"}]})
    with pytest.raises(MissingParameter) as caught:
        parse_request(Endpoint.CHAT, raw)
    assert caught.value.param == "messages[0].role"


@pytest.mark.parametrize("raw", [b"", b"  ", b"nul", b"[]", b"1", b'{"a":1'])
def test_non_object_bodies_are_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJSON):
        parse_request(Endpoint.CHAT, raw)
