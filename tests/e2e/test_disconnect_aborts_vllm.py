"""A client dropping a long generation frees vLLM at once (real engine).

Streaming: vLLM's num_requests_running is back to 0 within 1 s of the client leaving.
Non-streaming: vLLM does not move that gauge while a non-streamed request runs, so the proof is
its token counter: the request's tokens are booked within 1 s, and no token is generated after.
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


async def wait_running(real: RealStack, model: str, target: float, seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if await asyncio.to_thread(real.running, model) == target:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"vllm:num_requests_running never reached {target}")


async def generate_then_leave(real: RealStack, body: dict[str, object], started: object) -> None:
    async with httpx.AsyncClient(base_url=real.gateway, timeout=60) as http:

        async def generate() -> None:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_bytes():
                    pass

        task = asyncio.create_task(generate())
        await started  # type: ignore[misc]
        task.cancel()  # the client goes away: its connection closes
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_client_dropping_a_stream_frees_the_engine_within_a_second(real: RealStack) -> None:
    model = real.model_names[0]
    await wait_running(real, model, 0, 10)
    body = {"model": model, "stream": True, **LONG}
    await generate_then_leave(real, body, wait_running(real, model, 1, 30))
    freed_after = await wait_running(real, model, 0, 5)
    assert freed_after < 1.0, f"engine still busy {freed_after:.2f}s after the client left"


async def test_client_dropping_a_non_streamed_request_stops_generation(real: RealStack) -> None:
    model = real.model_names[0]
    await wait_running(real, model, 0, 10)
    before = await asyncio.to_thread(real.generated, model)
    body = {"model": model, "stream": False, **LONG}
    await generate_then_leave(real, body, asyncio.sleep(1.5))  # well into generation
    await asyncio.sleep(1.0)
    booked = await asyncio.to_thread(real.generated, model)
    await asyncio.sleep(3.0)
    later = await asyncio.to_thread(real.generated, model)
    assert 0 < booked - before < MAX_TOKENS, "the request was not cut short within 1 s"
    assert later == booked, "the engine kept generating after the client left"
