"""Tokens per minute on a real engine: reserve at admission, reconcile with vLLM's usage.

Concurrent streaming and non-streaming requests from one tpm-limited key never get more
admitted than the limit allows (plus one request's reservation at most), and the tokens the
gateway books for the key equal what vLLM itself counted (its prompt + generation counters).
"""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import orjson
import pytest

from gateway.api.validation import parse_request
from gateway.limits.reserve import reserve_tokens
from gateway.request import Endpoint
from tests.e2e.conftest import TPM_LIMIT, RealStack

pytestmark = pytest.mark.e2e


def booked(real: RealStack, key_name: str) -> float:
    text = httpx.get(real.gateway + "/metrics").text
    found = re.search(rf'^gateway_key_tokens_total\{{key="{key_name}"\}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_tpm_admits_within_the_limit_and_books_vllm_usage(real: RealStack) -> None:
    model = real.model_names[1]
    bodies = [
        {
            "model": model,
            "max_tokens": 40,
            "stream": i % 2 == 0,
            "ignore_eos": True,
            "messages": [{"role": "user", "content": f"Tell me about number {i}."}],
            **({"stream_options": {"include_usage": True}} if i % 4 == 0 else {}),
        }
        for i in range(24)
    ]
    prompt_before = await asyncio.to_thread(real.engine_metric, model, "vllm:prompt_tokens_total")
    gen_before = await asyncio.to_thread(real.engine_metric, model, "vllm:generation_tokens_total")
    booked_before = await asyncio.to_thread(booked, real, "e2e-tpm")
    headers = {"authorization": f"Bearer {real.tpm_key}"}
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=real.gateway, timeout=60, headers=headers) as http:
        answers = await asyncio.gather(*(http.post("/v1/chat/completions", json=b) for b in bodies))
    elapsed = time.monotonic() - started
    admitted = [b for b, a in zip(bodies, answers, strict=True) if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert all(a.status_code == 429 for a in refused)
    assert all(a.json()["error"]["code"] == "rate_limit_exceeded" for a in refused)
    assert admitted
    assert refused
    reservations = [
        reserve_tokens(parse_request(Endpoint.CHAT, orjson.dumps(b)), 1024) for b in admitted
    ]

    await asyncio.sleep(1.0)  # the last settlements
    vllm_used = (
        await asyncio.to_thread(real.engine_metric, model, "vllm:prompt_tokens_total")
        - prompt_before
        + await asyncio.to_thread(real.engine_metric, model, "vllm:generation_tokens_total")
        - gen_before
    )
    assert await asyncio.to_thread(booked, real, "e2e-tpm") - booked_before == vllm_used
    # What the admitted requests used stays within the bucket: its capacity, what it refilled
    # meanwhile, and one reservation's overshoot. (Their reservations alone may add up to more:
    # a request that finished before others were decided gave back what it did not use.)
    refill = TPM_LIMIT * elapsed / 60
    assert vllm_used <= TPM_LIMIT + max(reservations) + refill
    streamed = [
        a.text for b, a in zip(bodies, answers, strict=True) if a.status_code == 200 and b["stream"]
    ]
    asked = [b.get("stream_options") is not None for b in bodies if b["stream"] and b in admitted]
    for text, wanted in zip(streamed, asked, strict=True):
        assert has_usage_chunk(text) == wanted  # the chunk the gateway asked for is stripped


def has_usage_chunk(text: str) -> bool:
    """vLLM's final usage chunk (choices empty, usage set); other chunks may carry usage:null."""
    for event in text.split("\n\n"):
        if event.startswith("data: {"):
            doc = orjson.loads(event[6:])
            if doc.get("choices") == [] and doc.get("usage"):
                return True
    return False
