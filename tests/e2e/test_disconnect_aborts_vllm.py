"""A client dropping a long generation frees vLLM at once (real engine).

The proof is vLLM's own metrics: within 1 s of the client leaving, `vllm:num_requests_running`
reads 0 and the request's generated tokens are booked (a request's count is booked when it
ends), well short of `max_tokens`; and no token is generated after that.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e
MAX_TOKENS = 3000
LONG = {
    "messages": [{"role": "user", "content": "Write a long story."}],
    "max_tokens": MAX_TOKENS,
    "ignore_eos": True,
}


async def metric(real: RealStack, model: str, name: str) -> float:
    return await asyncio.to_thread(real.engine_metric, model, name)


async def wait_idle(real: RealStack, model: str) -> None:
    deadline = time.monotonic() + 10
    while await metric(real, model, "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "the engine is busy before the test"
        await asyncio.sleep(0.05)


async def drop_after(real: RealStack, body: dict[str, object], events: int) -> None:
    """Send `body`; leave (close the connection) after `events` SSE events, or after 1.5 s."""
    received = asyncio.Event()

    async def generate() -> None:
        auth = {"authorization": f"Bearer {real.key}"}
        async with httpx.AsyncClient(base_url=real.gateway, timeout=60, headers=auth) as http:  # noqa: SIM117
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                seen = 0
                async for line in response.aiter_lines():
                    seen += line.startswith("data: {")
                    if seen == events:
                        received.set()

    task = asyncio.create_task(generate())
    if events:
        await asyncio.wait_for(received.wait(), 60)  # tokens are flowing
    else:
        await asyncio.sleep(1.5)  # well into a non-streamed generation
    assert not task.done(), "the generation ended before the client left"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "non-streaming"])
async def test_client_dropping_a_long_generation_frees_the_engine(
    real: RealStack, stream: bool
) -> None:
    model = real.model_names[0]
    await wait_idle(real, model)
    before = await metric(real, model, "vllm:generation_tokens_total")
    await drop_after(real, {"model": model, "stream": stream, **LONG}, 20 if stream else 0)
    await asyncio.sleep(1.0)
    running = await metric(real, model, "vllm:num_requests_running")
    booked = await metric(real, model, "vllm:generation_tokens_total")
    await asyncio.sleep(3.0)
    later = await metric(real, model, "vllm:generation_tokens_total")
    assert running == 0, "vLLM still runs the request 1 s after the client left"
    assert 0 < booked - before < MAX_TOKENS, "the request was not cut short within 1 s"
    assert later == booked, "the engine kept generating after the client left"
