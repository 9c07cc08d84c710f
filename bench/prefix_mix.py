"""Does cache-aware routing pay? Real vLLM CPU workers of one model (prefix caching on, a small KV
cache each), three workloads, three routing policies, each run through its own fresh gateway.

    python -m bench.prefix_mix [--runs 3] [--workers 3] [--concurrency 3] [--quick]
        [--workloads a,b,c] [--policies least-loaded,session,cache-aware] [--shared-cpus]
        [--gateway-env GATEWAY_PREFIX_BALANCE=0.5 ...]

Workloads: (a) multi-turn conversations resending their history, (b) a few long system prompts
shared by many short questions, (c) unrelated prompts. Policies: least-loaded (no session id,
GATEWAY_PREFIX_ROUTING=false), session (an x-session-id per conversation, per system prompt in (b),
per request in (c)), cache-aware (no session id, GATEWAY_PREFIX_ROUTING=true), cache-precise (the
same, following the workers' KV-cache events: GATEWAY_PREFIX_KV_EVENTS=true). The workers start
once (about two minutes); before every run their prefix caches are emptied (POST
/reset_prefix_cache, served because they run with VLLM_SERVER_DEV_MODE=1) and a new gateway starts.
Writes bench/out/prefix-mix-<time>.md and .json; needs the vLLM venv (make vllm-venv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bench import prefix_report
from bench.engine_metrics import cache_counts, reset_prefix_caches, routing_decisions
from bench.prefix_drive import Request, drive
from bench.prefix_report import RunResult
from bench.prefix_workloads import QUICK, WORKLOADS, Sizes, build
from bench.procs import ROOT, free_port
from bench.real_engines import start_gateway, write_attached_config
from bench.targets import parse_env
from gateway.config.models import ModelsConfig, parse_models_config
from workers.local import LocalWorkers

MODEL = "prefix-mix"
STAND_IN_SHAPE = "prefill"  # workers.tinymodel.SHAPES: ~10 M parameters, prefill dominates
MAX_MODEL_LEN = 8192
# The stand-in is saved in bfloat16; on a CPU without AVX-512 BF16 (this machine has AVX only)
# vLLM computes it ~3x slower than float32 (measured, one core: a 3,000-token prefill ~8.5 s vs
# ~3 s cold, ~0.2 s from the prefix cache).
DEFAULT_DTYPE = "float32"
OUT = ROOT / "bench" / "out"


@dataclass(frozen=True)
class Policy:
    env: dict[str, str]
    session: bool  # send x-session-id


POLICIES = {
    "least-loaded": Policy({"GATEWAY_PREFIX_ROUTING": "false"}, session=False),
    "session": Policy({"GATEWAY_PREFIX_ROUTING": "false"}, session=True),
    "cache-aware": Policy({"GATEWAY_PREFIX_ROUTING": "true"}, session=False),
    # Precise mode: the index follows the workers' KV-cache events.
    "cache-precise": Policy(
        {"GATEWAY_PREFIX_ROUTING": "true", "GATEWAY_PREFIX_KV_EVENTS": "true"}, session=False
    ),
}


def _subset(value: str, known: list[str]) -> list[str]:
    chosen = [item.strip() for item in value.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in known]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose among {','.join(known)}, got {value!r}")
    return chosen


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.prefix_mix",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--runs", type=int, default=3, help="runs per workload and policy, alternating (3)")
    add("--workers", type=int, default=3, help="vLLM CPU workers of the model (3)")
    add("--concurrency", type=int, default=3, help="requests in flight at once (3)")
    add("--conversations", type=int, help=f"(a) conversations (default {Sizes.conversations})")
    add("--turns", type=int, help=f"(a) turns per conversation (default {Sizes.turns})")
    add("--first-tokens", type=int, help=f"long prompts' size (default {Sizes.first_tokens})")
    add("--system-prompts", type=int, help=f"(b) system prompts (default {Sizes.system_prompts})")
    add("--max-tokens", type=int, default=16, help="tokens per answer (16)")
    add("--kv-blocks", type=int, default=200, help="KV cache per worker, 128-token blocks (200)")
    add("--dtype", default=DEFAULT_DTYPE, help=f"vLLM --dtype of the workers ({DEFAULT_DTYPE})")
    add(
        "--shared-cpus",
        action="store_true",
        help="one thread per worker, not pinned: the kernel shares the CPUs evenly (default: "
        "each worker pinned to a CPU, which with more workers than CPUs puts some on one)",
    )
    add("--quick", action="store_true", help="smoke run: tiny sizes, 1 run")
    add("--workloads", default="a,b,c", type=lambda v: _subset(v, list(WORKLOADS)))
    add("--policies", default=",".join(POLICIES), type=lambda v: _subset(v, list(POLICIES)))
    add(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="GATEWAY_* variable for every policy's gateway (repeatable); the policy's own "
        "GATEWAY_PREFIX_ROUTING wins",
    )
    add("--out", type=Path, default=OUT, help="where results go (bench/out)")
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        args.gateway_env = parse_env(args.gateway_env)
    except ValueError as exc:
        parser.error(str(exc))
    if args.quick:
        args.runs = 1
    return args


def sizes_of(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    given = {
        "conversations": args.conversations,
        "turns": args.turns,
        "first_tokens": args.first_tokens,
        "system_prompts": args.system_prompts,
    }
    return replace(sizes, **{k: v for k, v in given.items() if v is not None})


def models_config(workers: int, kv_blocks: int, dtype: str = DEFAULT_DTYPE) -> ModelsConfig:
    names = [f"pm-{index}" for index in range(workers)]
    return parse_models_config(
        json.dumps(  # JSON is YAML
            {
                "models": [
                    {
                        "name": MODEL,
                        "model": "stand-in/prefix-mix",
                        "max_model_len": MAX_MODEL_LEN,
                        "vllm_args": [
                            *("--num-gpu-blocks-override", str(kv_blocks)),
                            *("--dtype", dtype),
                        ],
                        "workers": [
                            {"name": name, "gpus": [index], "port": 8301 + index}
                            for index, name in enumerate(names)
                        ],
                    }
                ]
            }
        )
    )


@dataclass(frozen=True)
class Bench:
    """What every run shares: the running workers, the gateway's models file, the settings."""

    workers: list[str]  # base URLs
    cpus: str  # which CPUs each worker computes on
    config_path: Path
    log_dir: Path
    sizes: Sizes
    concurrency: int
    max_tokens: int
    gateway_env: dict[str, str]


def one_run(bench: Bench, workload: str, policy: str, repetition: int) -> RunResult:
    """A fresh gateway for `policy`, empty prefix caches, then the workload of this repetition."""
    conversations = build(workload, bench.sizes, seed=repetition)
    reset_prefix_caches(bench.workers)
    env = {**bench.gateway_env, **POLICIES[policy].env}
    service, url = start_gateway(bench.config_path, env, bench.log_dir, f"gateway-{policy}")
    try:
        before = cache_counts(bench.workers)
        request = Request(MODEL, bench.max_tokens, session=POLICIES[policy].session)
        traffic = asyncio.run(drive(url, request, conversations, bench.concurrency))
        time.sleep(0.5)  # let the engines publish the last steps' stats
        cache = cache_counts(bench.workers) - before
        routing = routing_decisions(url)
    finally:
        service.stop()
    return RunResult(workload, policy, repetition, traffic, cache, routing)


def warm_up(bench: Bench) -> None:
    """Each engine's first long prefills are slower (warm-up): send a few straight to each."""
    sizes = replace(bench.sizes, conversations=1, turns=2)
    request = Request(MODEL, bench.max_tokens, session=False)

    async def all_workers() -> None:
        await asyncio.gather(
            *(drive(url, request, build("c", sizes, seed=-1), 2) for url in bench.workers)
        )

    asyncio.run(all_workers())


def measure(bench: Bench, args: argparse.Namespace, results: list[RunResult]) -> None:
    """Per workload, the policies in turn, repeated: ABCABCABC. Appends to `results`."""
    for workload in args.workloads:
        for repetition in range(args.runs):
            for policy in args.policies:
                result = one_run(bench, workload, policy, repetition)
                print(prefix_report.progress_line(result), file=sys.stderr, flush=True)
                results.append(result)


def header(bench: Bench, args: argparse.Namespace, started: datetime) -> list[str]:
    s = bench.sizes
    extra = ", ".join(f"`{k}={v}`" for k, v in bench.gateway_env.items()) or "none"
    return [
        "`" + " ".join(["python -m bench.prefix_mix", *args.argv]) + "`",
        "",
        f"- {started:%Y-%m-%d %H:%M} UTC; {args.workers} vLLM CPU workers of one stand-in "
        f"(shape `{STAND_IN_SHAPE}`, ~10 M parameters, {args.dtype}); "
        f"prefix caching on, KV cache {args.kv_blocks} blocks of 128 tokens "
        f"({args.kv_blocks * 128:,} tokens) per worker, max_model_len {MAX_MODEL_LEN}; "
        f"{bench.cpus}",
        f"- streamed chat requests, {bench.max_tokens} tokens per answer, concurrency "
        f"{bench.concurrency}; medians of {args.runs} run(s) per cell, policies alternating; "
        "prefix caches emptied and a fresh gateway before every run",
        f"- (a) {s.conversations} conversations x {s.turns} turns, first message ~{s.first_tokens} "
        f"tokens, then ~{s.turn_tokens} per turn (+ the previous answers); (b) {s.requests} "
        f"requests, each one of {s.system_prompts} system prompts of ~{s.first_tokens} tokens + a "
        f"~{s.question_tokens}-token question; (c) {s.requests} unrelated ~{s.first_tokens}-token "
        "prompts",
        "- TTFT: from writing the request to the first event with content; e2e: to the stream's "
        "end; vLLM prefix hit %: Δ vllm:prefix_cache_hits_total / Δ queries, summed over workers",
        f"- extra gateway env: {extra}",
    ]


def write(bench: Bench, args: argparse.Namespace, runs: list[RunResult], started: datetime) -> str:
    stamp = started.strftime("%Y%m%d-%H%M%S")
    text = prefix_report.render(header(bench, args, started), runs, args.policies)
    (args.out / f"prefix-mix-{stamp}.md").write_text(text)
    raw = {
        "settings": {**vars(args), "out": str(args.out), "sizes": asdict(bench.sizes)},
        "runs": [run.to_json() for run in runs],
    }
    (args.out / f"prefix-mix-{stamp}.json").write_text(json.dumps(raw, indent=1))
    print(f"prefix_mix: wrote {args.out}/prefix-mix-{stamp}.md and .json", file=sys.stderr)
    return text


def _cpus(engines: LocalWorkers, *, shared: bool) -> str:
    if shared:
        return "one thread per worker, not pinned (--shared-cpus)"
    return ", ".join(f"{launch.name} on CPU {launch.cpu_bind}" for launch in engines.launches)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = datetime.now(UTC)
    log_dir = args.out / f"prefix-mix-logs-{started:%Y%m%d-%H%M%S}"
    log_dir.mkdir(parents=True, exist_ok=True)
    config = models_config(args.workers, args.kv_blocks, args.dtype)
    ports = {worker.name: free_port() for worker in config.models[0].workers}
    engines = LocalWorkers(
        config,
        ports=ports,
        # VLLM_SERVER_DEV_MODE serves POST /reset_prefix_cache
        env={"VLLM_SERVER_DEV_MODE": "1", **({"OMP_NUM_THREADS": "1"} if args.shared_cpus else {})},
        stand_in_shape=STAND_IN_SHAPE,
        cpu_bind="nobind" if args.shared_cpus else None,
    )
    with engines:
        bench = Bench(
            workers=[launch.base_url for launch in engines.launches],
            cpus=_cpus(engines, shared=args.shared_cpus),
            config_path=write_attached_config(engines, log_dir / "models.yaml"),
            log_dir=log_dir,
            sizes=sizes_of(args),
            concurrency=args.concurrency,
            max_tokens=args.max_tokens,
            gateway_env=args.gateway_env,
        )
        warm_up(bench)
        runs: list[RunResult] = []
        try:
            measure(bench, args, runs)
        finally:
            if runs:  # interrupted or not, keep what was measured
                print(write(bench, args, runs, started))
    return 1 if any(run.failed for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
