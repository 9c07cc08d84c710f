"""A request's priority: the key's class, lowered (never raised) per request, and spliced into
the body as vLLM's `priority` without re-encoding what the client sent."""

from __future__ import annotations

import orjson
import pytest

from gateway.api.usage import effective_priority
from gateway.api.validation import parse_request
from gateway.config.keys import Principal
from gateway.errors import InvalidRequest
from gateway.relay.amend import body_prioritized
from gateway.request import Endpoint, RequestView


def principal(priority: int) -> Principal:
    return Principal("k", None, None, None, None, priority=priority)


def view(**fields: object) -> RequestView:
    doc = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(Endpoint.CHAT, orjson.dumps(doc))


@pytest.mark.parametrize(
    ("key", "header", "expected"),
    [
        (0, None, 0),
        (0, b"batch", 2),  # lowered by the client
        (2, b"interactive", 2),  # never raised above the key's
        (1, b"7", 7),
        (1, b" Standard ", 1),
    ],
)
def test_the_header_lowers_the_keys_class_never_raises_it(
    key: int, header: bytes | None, expected: int
) -> None:
    headers = [(b"x-priority", header)] if header is not None else []
    assert effective_priority(principal(key), headers, view()) == expected


def test_a_bad_header_is_a_400_naming_the_header() -> None:
    with pytest.raises(InvalidRequest) as refused:
        effective_priority(principal(1), [(b"x-priority", b"asap")], view())
    assert refused.value.param == "x-priority"
    assert "asap" not in refused.value.message


def test_the_body_priority_may_lower_too() -> None:
    assert effective_priority(principal(0), [], view(priority=5)) == 5
    assert effective_priority(principal(2), [], view(priority=0)) == 2


def test_priority_is_spliced_in_leaving_the_clients_bytes_as_they_were() -> None:
    request = view(temperature=0.5)
    body = body_prioritized(request.body, request, 2)
    assert body == b'{"priority":2,' + request.body[1:]
    assert orjson.loads(body)["priority"] == 2


def test_a_clients_own_higher_priority_is_replaced_a_lower_one_kept() -> None:
    raising = view(priority=0)
    assert orjson.loads(body_prioritized(raising.body, raising, 2))["priority"] == 2
    lowering = view(priority=9)
    assert body_prioritized(lowering.body, lowering, 2) == lowering.body
