"""The Anthropic Python SDK pointed at the gateway (its key in `x-api-key`): messages plain and
streamed with Anthropic's event names, count_tokens, the gateway's errors as the SDK's own
exception classes, token limits on /v1/messages, and a stream cut mid-way as `event: error`."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from anthropic.types import MessageParam

from tests.endpoint_stack import Stack, endpoint_stack

HI: list[MessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, module_redis_url: str) -> Iterator[Stack]:
    with endpoint_stack(tmp_path_factory.mktemp("anthropic"), module_redis_url) as started:
        yield started


def _client(stack: Stack, key: str = "open", url: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=url or stack.url, api_key=stack.keys.get(key, key), max_retries=0
    )


def test_messages_plain_and_streamed_through_the_sdk(stack: Stack) -> None:
    client = _client(stack)
    message = client.messages.create(model="chat", max_tokens=8, messages=HI)
    assert message.content[0].type == "text"
    assert message.usage.input_tokens == 3
    with client.messages.stream(
        model="chat", max_tokens=8, messages=HI, extra_body={"fake": {"text": "w", "chunks": 4}}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "w0 w1 w2 w3 "
    assert final.usage.output_tokens == 4
    counted = client.messages.count_tokens(model="chat", messages=HI)
    assert counted.input_tokens == 3


def test_the_gateways_errors_are_the_sdks_exception_classes(stack: Stack) -> None:
    with pytest.raises(anthropic.AuthenticationError) as auth:
        _client(stack, "sk-not-a-key").messages.create(model="chat", max_tokens=8, messages=HI)
    assert auth.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
    }
    with pytest.raises(anthropic.NotFoundError):
        _client(stack).messages.create(model="nope", max_tokens=8, messages=HI)
    with pytest.raises(anthropic.BadRequestError):
        _client(stack).messages.create(model="embed", max_tokens=8, messages=HI)
    with pytest.raises(anthropic.BadRequestError):
        _client(stack).messages.create(model="chat", max_tokens=8, messages=[])


def test_messages_reserve_max_tokens_then_reconcile_with_the_reported_usage(stack: Stack) -> None:
    client = _client(stack, "messages-tpm")  # 150 tokens a minute
    for _ in range(3):  # each reserves ~100 and uses 4: only reconciling lets the next pass
        client.messages.create(model="chat", max_tokens=90, messages=HI)
    with client.messages.stream(model="chat", max_tokens=90, messages=HI) as stream:
        stream.until_done()
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="chat", max_tokens=500, messages=HI)
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_a_stream_cut_mid_way_raises_the_sdks_error(stack: Stack) -> None:
    client = _client(stack)
    script = {"fake": {"chunks": 4, "cut_after": 3}}
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client.messages.stream(
            model="chat", max_tokens=8, messages=HI, extra_body=script
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass
    assert "api_error" in str(caught.value)
