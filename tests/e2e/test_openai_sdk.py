"""The official openai SDK, unmodified, through the gateway to real vLLM engines."""

from __future__ import annotations

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


def client(real: RealStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=real.gateway + "/v1", api_key=real.key, max_retries=0)


def aclient(real: RealStack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=real.gateway + "/v1", api_key=real.key, max_retries=0)


def test_each_model_is_answered_by_its_own_engine(real: RealStack) -> None:
    for name in real.model_names:
        reply = client(real).chat.completions.create(
            model=name,
            messages=CHAT,
            max_tokens=8,
        )
        assert reply.model == name  # vLLM answers with its --served-model-name
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage is not None
        assert 1 <= reply.usage.completion_tokens <= 8


def test_sync_chat_stream_ends_with_usage_when_asked(real: RealStack) -> None:
    name = real.model_names[0]
    chunks = list(
        client(real).chat.completions.create(
            model=name,
            messages=CHAT,
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text_chunks = [c for c in chunks if c.choices]
    assert text_chunks[0].choices[0].delta.role == "assistant"
    assert text_chunks[-1].choices[0].finish_reason in {"length", "stop"}
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6 or chunks[-1].choices == []


def test_sync_completions_plain_and_streaming(real: RealStack) -> None:
    name = real.model_names[1]
    reply = client(real).completions.create(model=name, prompt="Once upon", max_tokens=5)
    assert reply.object == "text_completion"
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 5
    pieces = [
        c.choices[0].text
        for c in client(real).completions.create(
            model=name, prompt="Once upon", max_tokens=5, stream=True
        )
        if c.choices
    ]
    assert len(pieces) >= 1


async def test_async_chat_and_completions_plain_and_streaming(real: RealStack) -> None:
    sdk = aclient(real)
    for name in real.model_names:
        reply = await sdk.chat.completions.create(
            model=name,
            messages=CHAT,
            max_tokens=4,
        )
        assert reply.model == name
        stream = await sdk.chat.completions.create(
            model=name,
            messages=CHAT,
            max_tokens=4,
            stream=True,
        )
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
        assert finishes[-1] in {"length", "stop"}
        completion = await sdk.completions.create(model=name, prompt="Hi", max_tokens=3)
        assert completion.model == name
        pieces = [
            c
            async for c in await sdk.completions.create(
                model=name, prompt="Hi", max_tokens=3, stream=True
            )
        ]
        assert pieces
    await sdk.close()


def test_unknown_model_raises_not_found(real: RealStack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(real).chat.completions.create(model="gpt-4", messages=CHAT)
    assert caught.value.code == "model_not_found"


def test_models_list_names_every_configured_model_and_adapter(real: RealStack) -> None:
    assert sorted(m.id for m in client(real).models.list()) == sorted(real.served_names)


def test_vllm_rejection_keeps_its_status_and_message(real: RealStack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(real).chat.completions.create(
            model=real.model_names[0],
            messages=CHAT,
            max_tokens=1_000_000,
        )
    assert "max_tokens" in caught.value.message or "maximum context length" in caught.value.message


def test_vllm_extra_fields_reach_the_engine(real: RealStack) -> None:
    reply = client(real).chat.completions.create(
        model=real.model_names[0],
        messages=CHAT,
        max_tokens=5,
        extra_body={"structured_outputs": {"choice": ["red", "blue"]}, "top_k": 5},
    )
    assert reply.choices[0].message.content in {"red", "blue"}
