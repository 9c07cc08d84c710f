"""Time to first token on a real engine: direct vs through the gateway, interleaved, at c=1.

    python -m bench.ttft_real --engine http://127.0.0.1:8101 --gateway http://127.0.0.1:8000 \
        --model qwen2.5-1.5b-instruct [-n 100]

Each round sends one streaming request straight to the engine and one through the gateway (in
alternating order), and times the first SSE event that carries a token. Prints medians and p90.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx


async def ttft(client: httpx.AsyncClient, base: str, model: str) -> float:
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
    }
    started = time.perf_counter()
    async with client.stream("POST", base + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        first = None
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: {"):
                first = time.perf_counter() - started
        assert first is not None
        return first


def summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9) - 1]
    return (
        f"| {name} | {statistics.median(ordered) * 1000:.2f} | {p90 * 1000:.2f} | {len(ordered)} |"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", required=True)
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("-n", type=int, default=100)
    args = parser.parse_args()
    direct: list[float] = []
    gateway: list[float] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(3):  # warm both paths' connections and the engine
            await ttft(client, args.engine, args.model)
            await ttft(client, args.gateway, args.model)
        for index in range(args.n):
            order = [(args.engine, direct), (args.gateway, gateway)]
            for base, samples in order if index % 2 else reversed(order):
                samples.append(await ttft(client, base, args.model))
    delta = statistics.median(gateway) - statistics.median(direct)
    print("| path | TTFT p50 (ms) | TTFT p90 (ms) | requests |\n|---|---|---|---|")
    print(summary("direct to vLLM", direct))
    print(summary("through the gateway", gateway))
    print(f"\nmedian TTFT added by the gateway: {delta * 1000:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
