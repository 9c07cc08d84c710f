"""Anthropic's Messages API through the gateway to a real engine, with the `anthropic` SDK
(which sends the key in `x-api-key`): plain, streamed, token counting, and its error shape."""

from __future__ import annotations

import anthropic
import pytest

from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e


def client(real: RealStack, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=real.gateway, api_key=key or real.key, max_retries=0)


def test_message_is_answered_with_usage(real: RealStack) -> None:
    model = real.model_names[0]
    message = client(real).messages.create(
        model=model,
        max_tokens=8,
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == model
    assert message.stop_reason in {"end_turn", "max_tokens"}
    assert 1 <= message.usage.output_tokens <= 8
    assert message.usage.input_tokens > 0


def test_stream_yields_anthropic_events_and_a_final_message(real: RealStack) -> None:
    model = real.model_names[1]
    with client(real).messages.stream(
        model=model,
        max_tokens=8,
        messages=[{"role": "user", "content": "Count."}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start"
    assert "content_block_delta" in kinds
    assert kinds[-1] == "message_stop"
    assert final.usage.output_tokens >= 1


def test_count_tokens_counts_the_prompt(real: RealStack) -> None:
    sdk = client(real)
    short = sdk.messages.count_tokens(
        model=real.model_names[0], messages=[{"role": "user", "content": "Hi"}]
    )
    long = sdk.messages.count_tokens(
        model=real.model_names[0],
        messages=[{"role": "user", "content": "Hi, " * 50}],
    )
    assert 0 < short.input_tokens < long.input_tokens


def test_wrong_key_is_refused_in_anthropics_shape(real: RealStack) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client(real, key="sk-wrong").messages.create(
            model=real.model_names[0],
            max_tokens=4,
            messages=[{"role": "user", "content": "Hi"}],
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"


def test_unknown_model_is_not_found_in_anthropics_shape(real: RealStack) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(real).messages.create(
            model="claude-unknown",
            max_tokens=4,
            messages=[{"role": "user", "content": "Hi"}],
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
