"""LoRA adapters as models, on a real engine: an adapter every worker loaded at start, and one
the gateway loads at run time (vLLM's /v1/load_lora_adapter), both through the openai SDK."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.e2e.conftest import RUNTIME_ADAPTER, RealStack

pytestmark = pytest.mark.e2e
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


def client(real: RealStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=real.gateway + "/v1", api_key=real.key, max_retries=0)


def greedy(http: httpx.Client | openai.OpenAI, model: str) -> str:
    """The same prompt, greedy and seeded: only the weights decide the answer."""
    if isinstance(http, openai.OpenAI):
        reply = http.chat.completions.create(
            model=model, messages=CHAT, max_tokens=12, temperature=0, seed=7
        )
        assert reply.model == model
        return reply.choices[0].message.content or ""
    body = {"model": model, "messages": CHAT, "max_tokens": 12, "temperature": 0, "seed": 7}
    answer = http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    text: str = answer.json()["choices"][0]["message"]["content"]
    return text


def test_engine_serves_the_adapter_under_its_name_with_its_base_as_parent(
    real: RealStack,
) -> None:
    base = real.lora_model.name
    for url in real.worker_urls(base):
        with httpx.Client(base_url=url, timeout=60) as http:
            cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
            assert cards[real.adapter]["parent"] == base
            assert RUNTIME_ADAPTER not in cards  # loaded by the gateway on first use only
            assert greedy(http, real.adapter) != greedy(http, base)


def test_adapter_answers_differently_from_its_base_through_the_gateway(real: RealStack) -> None:
    sdk = client(real)
    base = greedy(sdk, real.lora_model.name)
    adapted = greedy(sdk, real.adapter)
    assert adapted != base
    assert greedy(sdk, real.adapter) == adapted  # deterministic: the difference is the adapter


def test_models_list_shows_adapters_with_their_parent(real: RealStack) -> None:
    cards = {m.id: m.model_dump() for m in client(real).models.list()}
    for name in (real.adapter, RUNTIME_ADAPTER):
        assert cards[name].get("parent") == real.lora_model.name


def test_runtime_adapter_is_loaded_on_first_use(real: RealStack) -> None:
    sdk = client(real)
    adapted = greedy(sdk, RUNTIME_ADAPTER)
    assert adapted != greedy(sdk, real.lora_model.name)
    assert adapted != greedy(sdk, real.adapter)
    loaded_on = []
    for url in real.worker_urls(real.lora_model.name):
        ids = [card["id"] for card in httpx.get(url + "/v1/models", timeout=10).json()["data"]]
        if RUNTIME_ADAPTER in ids:
            loaded_on.append(url)
    assert loaded_on  # the gateway asked a worker to load it
    assert greedy(sdk, RUNTIME_ADAPTER) == adapted
