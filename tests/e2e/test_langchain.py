"""LangChain's ChatOpenAI, unmodified, through the gateway to real vLLM engines."""

from __future__ import annotations

import pytest
from langchain_openai import ChatOpenAI

from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e


def chat(real: RealStack, model: str) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=real.gateway + "/v1",
        api_key=real.key,
        model=model,
        max_tokens=6,
        max_retries=0,
    )


def test_invoke_each_model(real: RealStack) -> None:
    for name in real.model_names:
        message = chat(real, name).invoke("Hello")
        assert isinstance(message.content, str)
        assert message.response_metadata["model_name"] == name


def test_stream_yields_chunks_then_finishes(real: RealStack) -> None:
    chunks = list(chat(real, real.model_names[0]).stream("Hello"))
    assert len(chunks) >= 2
    finishes = [c.response_metadata.get("finish_reason") for c in chunks]
    assert [f for f in finishes if f] in (["length"], ["stop"])


def test_batch_answers_every_prompt(real: RealStack) -> None:
    replies = chat(real, real.model_names[1]).batch(["one", "two", "three"])
    assert len(replies) == 3
    assert all(r.response_metadata["model_name"] == real.model_names[1] for r in replies)
