"""Does length-aware dispatch pay? Two real vLLM CPU workers of one model, a mixed workload of
short and long prompts, through the gateway with prompt-size steering off and on (alternating
runs), reporting throughput, latency and time to first token for each prompt class.

    python -m bench.length_mix [--requests 160] [--concurrency 16] [--runs 2]

Needs the vLLM venv (make vllm-venv); starts and stops everything itself.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.procs import Service, free_port
from bench.real_engines import start_gateway, stream_chat, write_attached_config
from bench.stats import percentile
from gateway.config.models import parse_models_config
from workers.local import LocalWorkers

MODEL = "mix"
CONFIG = f"""
models:
  - name: {MODEL}
    model: Qwen/Qwen2.5-1.5B-Instruct
    max_model_len: 4096
    workers:
      - {{name: mix-a, gpus: [0], port: 8201}}
      - {{name: mix-b, gpus: [1], port: 8202}}
"""
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "house",
    "river",
    "mountain",
    "blue",
    "green",
    "quick",
    "slow",
    "light",
    "dark",
]
SHORT_WORDS, LONG_WORDS = 20, 1200  # about 150 and 8,000 bytes of body: either side of 2,048
OUTPUT_TOKENS = 32


@dataclass
class Run:
    steering: bool
    wall: float = 0.0
    latency: dict[str, list[float]] = field(default_factory=lambda: {"short": [], "long": []})
    ttft: dict[str, list[float]] = field(default_factory=lambda: {"short": [], "long": []})
    tokens: int = 0
    failed: int = 0


def prompt(kind: str, rng: random.Random) -> str:
    count = SHORT_WORDS if kind == "short" else LONG_WORDS
    return " ".join(rng.choice(WORDS) for _ in range(count))


async def one(client: httpx.AsyncClient, url: str, kind: str, text: str, run: Run) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": OUTPUT_TOKENS,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": text}],
    }
    result = await stream_chat(client, url, body)
    if not result.ok:
        run.failed += 1
        return
    run.latency[kind].append(result.latency)
    if result.ttft is not None:
        run.ttft[kind].append(result.ttft)
    run.tokens += result.chunks


async def drive(url: str, run: Run, requests: int, concurrency: int, seed: int) -> None:
    rng = random.Random(seed)  # the same mix, in the same order, for every run
    work = [("short" if rng.random() < 0.5 else "long") for _ in range(requests)]
    texts = [prompt(kind, rng) for kind in work]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=300) as client:

        async def limited(kind: str, text: str) -> None:
            async with gate:
                await one(client, url, kind, text, run)

        started = time.perf_counter()
        await asyncio.gather(*(limited(k, t) for k, t in zip(work, texts, strict=True)))
        run.wall = time.perf_counter() - started


def start_steering_gateway(config_path: Path, steering: bool, log_dir: Path) -> tuple[Service, str]:
    env = {"GATEWAY_LENGTH_STEERING": "true" if steering else "false"}
    return start_gateway(config_path, env, log_dir)


def row(name: str, runs: list[Run]) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    cells = [
        med([len(r.latency["short"] + r.latency["long"]) / r.wall for r in runs]),
        med([r.tokens / r.wall for r in runs]),
    ]
    for kind in ("short", "long"):
        cells += [
            med([percentile(r.latency[kind], 50) for r in runs]) * 1000,
            med([percentile(r.latency[kind], 99) for r in runs]) * 1000,
            med([percentile(r.ttft[kind], 50) for r in runs]) * 1000,
            med([percentile(r.ttft[kind], 99) for r in runs]) * 1000,
        ]
    failed = sum(r.failed for r in runs)
    return f"| {name} | " + " | ".join(f"{c:,.1f}" for c in cells) + f" | {failed} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--runs", type=int, default=2, help="runs per setting, alternating")
    args = parser.parse_args()
    config = parse_models_config(CONFIG)
    ports = {w.name: free_port() for w in config.models[0].workers}
    log_dir = Path(tempfile.mkdtemp(prefix="length-mix-"))
    with LocalWorkers(config, ports=ports) as engines:
        config_path = write_attached_config(engines, log_dir / "models.yaml")
        results: dict[bool, list[Run]] = {False: [], True: []}
        warm = Run(False)
        service, url = start_steering_gateway(config_path, False, log_dir)
        asyncio.run(drive(url, warm, 32, args.concurrency, seed=99))  # warm both engines
        service.stop()
        for index in range(args.runs * 2):
            steering = index % 2 == 1
            service, url = start_steering_gateway(config_path, steering, log_dir)
            run = Run(steering)
            try:
                asyncio.run(drive(url, run, args.requests, args.concurrency, seed=index // 2))
            finally:
                service.stop()
            results[steering].append(run)
            print(f"run {index + 1}: steering={steering} {run.wall:.1f}s", file=sys.stderr)
    print(
        f"{args.requests} streamed chat requests, half short ({SHORT_WORDS} words) half long "
        f"({LONG_WORDS} words), {OUTPUT_TOKENS} output tokens each, concurrency "
        f"{args.concurrency}, 2 vLLM CPU workers; medians of {args.runs} runs per row."
    )
    print()
    print(
        "| length steering | req/s | tokens/s | short p50 ms | short p99 ms | short TTFT p50 "
        "| short TTFT p99 | long p50 ms | long p99 ms | long TTFT p50 | long TTFT p99 | failed |"
    )
    print("|---|" + "---|" * 11)
    print(row("off", results[False]))
    print(row("on", results[True]))


if __name__ == "__main__":
    main()
