"""Tokenize and detokenize, score, rerank and pooling through the gateway, routed by `model` to
real engines (score and rerank: cosine similarity on the embedding stand-in)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e


def post(real: RealStack, path: str, body: dict[str, object]) -> httpx.Response:
    headers = {"authorization": f"Bearer {real.key}"}
    return httpx.post(real.gateway + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize("which", [0, 1])
def test_tokenize_then_detokenize_gives_the_text_back(real: RealStack, which: int) -> None:
    model = real.model_names[which]
    text = "def route(request): return worker"
    tokens = post(real, "/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})
    assert tokens.status_code == 200, tokens.text
    ids = tokens.json()["tokens"]
    assert tokens.json()["count"] == len(ids) > 1
    back = post(real, "/detokenize", {"model": model, "tokens": ids})
    assert back.status_code == 200, back.text
    assert back.json()["prompt"] == text


def test_chat_messages_tokenize_with_the_chat_template(real: RealStack) -> None:
    model = real.model_names[0]
    messages = [{"role": "user", "content": "Hi"}]
    plain = post(real, "/tokenize", {"model": model, "prompt": "Hi"}).json()["count"]
    chat = post(real, "/tokenize", {"model": model, "messages": messages})
    assert chat.status_code == 200, chat.text
    assert chat.json()["count"] > plain  # the template's role markers


def test_the_embedding_model_tokenizes_with_its_own_vocabulary(real: RealStack) -> None:
    answer = post(real, "/tokenize", {"model": real.embedding_model, "prompt": "hello world"})
    assert answer.status_code == 200, answer.text
    chat = post(real, "/tokenize", {"model": real.model_names[0], "prompt": "hello world"})
    assert answer.json()["tokens"] != chat.json()["tokens"]


def test_score_rerank_and_pooling_reach_the_embedding_model(real: RealStack) -> None:
    model = real.embedding_model
    score = post(real, "/v1/score", {"model": model, "text_1": "a", "text_2": ["a", "b"]})
    assert score.status_code == 200, score.text
    assert score.json()["data"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    rerank = post(real, "/v1/rerank", {"model": model, "query": "a", "documents": ["b", "a"]})
    assert rerank.status_code == 200, rerank.text
    assert rerank.json()["results"][0]["index"] == 1
    pooled = post(real, "/pooling", {"model": model, "input": "a"})
    assert pooled.status_code == 200, pooled.text
    assert len(pooled.json()["data"][0]["data"]) == 128
