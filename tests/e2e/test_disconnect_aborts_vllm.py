"""A client dropping a long generation frees vLLM at once: num_requests_running back to 0 < 1 s."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.e2e.conftest import RealStack

pytestmark = pytest.mark.e2e
LONG = {
    "messages": [{"role": "user", "content": "Write a long story."}],
    "max_tokens": 3000,
    "ignore_eos": True,
}


async def wait_running(real: RealStack, model: str, target: float, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await asyncio.to_thread(real.running, model) == target:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"vllm:num_requests_running never reached {target}")


@pytest.mark.parametrize("stream", [True, False])
async def test_client_dropping_a_long_generation_frees_the_engine(
    real: RealStack, stream: bool
) -> None:
    model = real.model_names[0]
    assert await wait_running(real, model, 0, 10) >= 0
    body = {"model": model, "stream": stream, **LONG}
    async with httpx.AsyncClient(base_url=real.gateway, timeout=60) as http:

        async def generate() -> None:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    pass

        task = asyncio.create_task(generate())
        await wait_running(real, model, 1, 30)  # the engine is generating
        await asyncio.sleep(0.5)
        task.cancel()  # the client goes away: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await task
    freed_after = await wait_running(real, model, 0, 5)
    assert freed_after < 1.0, f"engine still busy {freed_after:.2f}s after the client left"
