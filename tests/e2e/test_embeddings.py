"""Embeddings from the real pooling engine (the bge-small stand-in): the openai SDK and
LangChain's OpenAIEmbeddings through the gateway, and what the engine itself serves."""

from __future__ import annotations

import array
import asyncio
import base64
import math
import re

import httpx
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr

from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e
DIMENSIONS = 128  # workers/tinyembed.py's hidden size


def client(real: RealStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=real.gateway + "/v1", api_key=real.key, max_retries=0)


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def test_engine_serves_normalized_embeddings_score_and_rerank(real: RealStack) -> None:
    """The stand-in as vLLM serves it, without the gateway: CLS pooling, normalized (bge's
    sentence-transformers config), and score/rerank by cosine similarity."""
    url, model = real.engine_url(real.embedding_model), real.embedding_model
    with httpx.Client(base_url=url, timeout=60) as http:
        answer = http.post("/v1/embeddings", json={"model": model, "input": ["a cat", "a dog"]})
        assert answer.status_code == 200, answer.text
        vectors = [item["embedding"] for item in answer.json()["data"]]
        assert [len(v) for v in vectors] == [DIMENSIONS, DIMENSIONS]
        assert all(abs(norm(v) - 1.0) < 1e-3 for v in vectors)
        score = http.post("/v1/score", json={"model": model, "text_1": "a", "text_2": ["a", "b"]})
        assert score.status_code == 200, score.text
        assert score.json()["data"][0]["score"] == pytest.approx(1.0, abs=1e-3)
        body = {"model": model, "query": "a", "documents": ["b", "a"]}
        rerank = http.post("/v1/rerank", json=body)
        assert rerank.status_code == 200, rerank.text
        assert rerank.json()["results"][0]["index"] == 1  # the identical document first
        assert http.post("/v1/chat/completions", json={"model": model}).status_code == 404


def test_sdk_embeds_a_string_a_list_and_token_arrays(real: RealStack) -> None:
    sdk = client(real)
    one = sdk.embeddings.create(model=real.embedding_model, input="The quick brown fox")
    assert one.model == real.embedding_model
    assert len(one.data) == 1
    assert len(one.data[0].embedding) == DIMENSIONS
    assert one.usage.prompt_tokens > 2  # [CLS] ... [SEP]

    many = sdk.embeddings.create(model=real.embedding_model, input=["one", "two", "three"])
    assert [item.index for item in many.data] == [0, 1, 2]
    assert many.data[0].embedding != many.data[1].embedding

    tokens = sdk.embeddings.create(model=real.embedding_model, input=[2, 100, 200, 3])
    assert len(tokens.data) == 1
    assert tokens.usage.prompt_tokens == 4  # token ids go through as they are
    arrays = sdk.embeddings.create(model=real.embedding_model, input=[[2, 100, 3], [2, 101, 3]])
    assert len(arrays.data) == 2
    assert arrays.usage.prompt_tokens == 6


def test_sdk_base64_embeddings_match_the_float_ones(real: RealStack) -> None:
    # The SDK asks for base64 unless told otherwise (and decodes it); asked explicitly, it
    # hands the packed little-endian float32s over as they came.
    sdk = client(real)
    plain = sdk.embeddings.create(model=real.embedding_model, input="same", encoding_format="float")
    packed = sdk.embeddings.create(
        model=real.embedding_model, input="same", encoding_format="base64"
    )
    raw = packed.data[0].embedding
    assert isinstance(raw, str)
    floats = array.array("f", base64.b64decode(raw))
    assert list(floats) == pytest.approx(plain.data[0].embedding, abs=1e-6)


def test_langchain_embeds_a_query_and_documents(real: RealStack) -> None:
    embeddings = OpenAIEmbeddings(
        openai_api_base=real.gateway + "/v1",
        openai_api_key=SecretStr(real.key),
        model=real.embedding_model,
        max_retries=0,
        # Otherwise LangChain splits the input with tiktoken (OpenAI's tokenizer, downloaded on
        # first use) and sends token ids of the wrong vocabulary.
        check_embedding_ctx_length=False,
    )
    query = embeddings.embed_query("What is a gateway?")
    assert len(query) == DIMENSIONS
    documents = embeddings.embed_documents(["A gateway routes.", "vLLM serves.", "Redis counts."])
    assert len(documents) == 3
    assert all(len(d) == DIMENSIONS for d in documents)
    assert embeddings.embed_query("What is a gateway?") == pytest.approx(query, abs=1e-5)


def test_embedding_model_refuses_chat(real: RealStack) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(real).chat.completions.create(
            model=real.embedding_model, messages=[{"role": "user", "content": "Hi"}]
        )
    assert 400 <= caught.value.status_code < 500


def booked(real: RealStack, key_name: str) -> float:
    text = httpx.get(real.gateway + "/metrics", timeout=10).text
    found = re.search(rf'^gateway_key_tokens_total\{{key="{key_name}"\}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_tpm_counts_the_prompt_tokens_vllm_embedded(real: RealStack) -> None:
    """A tpm-limited key (conftest.TPM_LIMIT): refusals are 429s, and the tokens booked for the
    key are the prompt tokens vLLM reported for the admitted requests (no completion here)."""
    before = await asyncio.to_thread(booked, real, "e2e-embed-tpm")
    headers = {"authorization": f"Bearer {real.embed_tpm_key}"}
    inputs = [" ".join(f"word{i}x{j}" for j in range(60)) for i in range(24)]
    async with httpx.AsyncClient(base_url=real.gateway, timeout=120, headers=headers) as http:
        answers = await asyncio.gather(
            *(http.post("/v1/embeddings", json={"model": real.embedding_model, "input": text})
              for text in inputs)
        )  # fmt: skip
    admitted = [a.json() for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert admitted
    assert refused
    assert all(a.status_code == 429 for a in refused)
    assert all(a.json()["error"]["code"] == "rate_limit_exceeded" for a in refused)
    # Reserved from the body's size at admission, then reconciled with vLLM's usage.
    used = sum(answer["usage"]["prompt_tokens"] for answer in admitted)
    await asyncio.sleep(1.0)  # the last settlements
    assert await asyncio.to_thread(booked, real, "e2e-embed-tpm") - before == used
