"""`python -m bench` (make bench): what the gateway costs, next to a direct-to-upstream baseline.

`python -m bench streams5k` runs the 5,000-open-streams test instead (bench/streams5k.py);
`python -m bench soak --minutes N` a long mixed run watching memory and open files
(bench/soak.py); `python -m bench prefix` only the in-process cost of the cache-aware routing index
(bench/prefix_cost.py, also appended to every report); `python -m bench fleet` the streaming
rate one gateway process (and two) sustains (bench/fleet.py); `python -m bench profile` where a
gateway process spends its CPU under paced streams (bench/profile.py, py-spy).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import nginx, prefix_cost, report
from bench.loads import run_streamload, run_wrk
from bench.procs import ROOT, Service, start_upstream
from bench.scenarios import SCENARIOS, LoadPlan, Run, run_once
from bench.targets import (
    BASE_ENV,
    CHAT_BODY,
    FLOOR,
    RAW_FLOOR,
    GatewayConfig,
    Target,
    new_api_key,
    parse_config_set,
    parse_env,
    start_gateway,
)

OUT = ROOT / "bench" / "out"


def missing_tools() -> list[str]:
    hints = {"wrk": "apt-get install -y wrk", "taskset": "apt-get install -y util-linux"}
    return [f"{tool} (install: {hint})" for tool, hint in hints.items() if not shutil.which(tool)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog="Inherited GATEWAY_* variables are ignored: a configuration is only what "
        "--gateway-env and --config-set say, on top of GATEWAY_AUTH_ENABLED=false. With "
        "GATEWAY_AUTH_ENABLED=true the bench writes a keys file with its own key and sends it. "
        "Example: --config-set bare --config-set "
        "keys:GATEWAY_AUTH_ENABLED=true,key.rpm=100000000",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s per run, 1 repeat")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario and target")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"subset of {','.join(SCENARIOS)}"
    )
    parser.add_argument("--label", default="bare", help="name of the gateway configuration")
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="GATEWAY_* variable for every configuration (repeatable)",
    )
    parser.add_argument(
        "--config-set",
        action="append",
        default=[],
        metavar="NAME:KEY=V,KEY=V",
        help="a gateway configuration to measure (repeatable; replaces --label); "
        "key.rpm=N, key.tpm=N, key.max_concurrent=N set the limits of the bench's API key",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="gateway processes (its --processes)"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure the floors: bench/floor_relay.py, a 30-line FastAPI relay (the least "
        "our stack can cost), and bench/raw_floor.py, a bare asyncio relay (the least Python can)",
    )
    parser.add_argument(
        "--nginx",
        action="store_true",
        help="also measure nginx as a plain proxy (bench/nginx.py; skipped with a note if absent)",
    )
    parser.add_argument("--chunks", type=int, default=32, help="chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="ms between chunks")
    parser.add_argument("--concurrency", type=int, default=64, help="c of the c64 and stream runs")
    parser.add_argument("--gateway-cpus", default="0", help="taskset CPU list of the gateway")
    parser.add_argument("--load-cpus", default="1", help="CPUs of the upstream and load")
    parser.add_argument("--out", type=Path, default=OUT, help="where results go (bench/out)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeat = 2, 1
    args.api_key = new_api_key()
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args


def configurations(args: argparse.Namespace) -> list[GatewayConfig]:
    common = {**BASE_ENV, **parse_env(args.gateway_env)}
    if not args.config_set:
        return [GatewayConfig(args.label, common, args.processes)]
    configs = [parse_config_set(spec, common, args.processes) for spec in args.config_set]
    labels = [config.label for config in configs]
    reserved = {"direct", FLOOR.label, RAW_FLOOR.label, nginx.LABEL}
    if len(set(labels)) != len(labels) or reserved & set(labels):
        raise SystemExit(
            "config set names must be unique, not 'direct', 'floor', 'raw-floor' or 'nginx': "
            f"{labels}"
        )
    return configs


def git_revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    revision = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "gateway", "pyproject.toml")
    return f"{revision} ({'gateway/ has uncommitted changes' if dirty else 'gateway/ clean'})"


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} cores ({model}), {memory:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def header(args: argparse.Namespace, configs: list[GatewayConfig], stamp: str) -> list[str]:
    lines = [
        f"- date: {stamp} UTC; git {git_revision()}",
        f"- machine: {machine()}",
        f"- pinning: gateway on CPU {args.gateway_cpus}; fake upstream and load generator "
        f"on CPU {args.load_cpus} (taskset)",
        f"- runs: {args.repeat} per scenario and target, {args.duration} s each, interleaved; "
        "a cell is the median [min, max] over the runs",
        f"- fake upstream (bench/upstream.py): non-streaming JSON; streams of {args.chunks} "
        f"chunks, one engine step every {args.gap_ms:g} ms, then the usage chunk and [DONE]",
        "- load: wrk (bench/post.lua) for non-streaming, bench/streamload.py for streams; "
        "every response checked",
        *([f"- `nginx`: {nginx.describe()}, pinned like the gateway"] if args.nginx else []),
        "- gateway configurations:",
        *(f"  - {config.describe()}" for config in configs),
    ]
    return lines


def warm_up(targets: list[Target], plan: LoadPlan) -> None:
    """Open the gateway's worker connections and warm its code paths; checked, not reported."""
    for target in targets:
        url = target.url + "/v1/chat/completions"
        results = [
            run_wrk(url, plan.high_concurrency, 1, plan.load_cpus, plan.body_file, plan.api_key),
            run_streamload(
                target.url,
                plan.load_cpus,
                plan.chunks,
                plan.high_concurrency,
                seconds=1,
                api_key=plan.api_key,
            ),
        ]
        for result in results:
            if result.invalid:
                raise SystemExit(
                    f"BENCH FAILED: warm-up against {target.name}: {result.invalid} invalid "
                    "responses, "
                    f"e.g. {result.examples[:3]}"
                )


def load_plan(args: argparse.Namespace, logs: Path) -> LoadPlan:
    return LoadPlan(
        seconds=args.duration,
        body_file=logs / "body.json",
        chunks=args.chunks,
        gap_ms=args.gap_ms,
        high_concurrency=args.concurrency,
        load_cpus=args.load_cpus,
        api_key=args.api_key,
    )


def measure(args: argparse.Namespace, configs: list[GatewayConfig], logs: Path) -> list[Run]:
    plan = load_plan(args, logs)
    plan.body_file.write_bytes(CHAT_BODY)
    services: list[Service] = []
    try:
        upstream, upstream_url = start_upstream(logs, args.load_cpus, args.chunks, args.gap_ms)
        services.append(upstream)
        targets = [Target(report.DIRECT, upstream_url)]
        if args.nginx:
            proxy, url = nginx.start_nginx(upstream_url, args.gateway_cpus, logs)
            services.append(proxy)
            targets.append(Target(nginx.LABEL, url, proxy))
        for config in configs:
            gateway, url = start_gateway(
                config, upstream_url, args.gateway_cpus, logs, plan.api_key
            )
            services.append(gateway)
            targets.append(Target(config.label, url, gateway))
        warm_up(targets, plan)
        runs: list[Run] = []
        scenarios = [s for s in SCENARIOS if s in args.scenarios.split(",")]
        for repetition in range(args.repeat):
            for scenario in scenarios:
                # Rotate the order so no target always runs first (drift, caches, timers).
                shift = repetition % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    run = run_once(scenario, target, upstream, plan, repetition)
                    runs.append(run)
                    print(
                        f"  {scenario:9} rep {repetition + 1}/{args.repeat} {target.name:12} "
                        f"{run.requests_per_s:9.0f} req/s  invalid {run.load.invalid}",
                        file=sys.stderr,
                    )
                    time.sleep(0.5)  # let closed connections settle
        return runs
    finally:
        for service in reversed(services):
            service.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["streams5k"]:
        from bench import streams5k

        return streams5k.main(argv[1:])
    if argv[:1] == ["prefix"]:
        return prefix_cost.main()
    if argv[:1] == ["soak"]:
        from bench import soak

        return soak.main(argv[1:])
    if argv[:1] == ["fleet"]:
        from bench import fleet

        return fleet.main(argv[1:])
    if argv[:1] == ["profile"]:
        from bench import profile

        return profile.main(argv[1:])
    args = parse_args(argv)
    missing = missing_tools()
    if missing:
        print("bench: missing tools: " + "; ".join(missing), file=sys.stderr)
        return 2
    configs = configurations(args)
    notes: list[str] = []
    if args.nginx and nginx.available() is None:
        args.nginx = False
        notes.append("- nginx: not installed (make tools installs nginx-light), not measured")
        print("bench: nginx is not installed; measuring without it", file=sys.stderr)
    if args.floor:
        configs += [FLOOR, RAW_FLOOR]
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    logs = args.out / f"logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"bench: logs in {logs}", file=sys.stderr)
    runs = measure(args, configs, logs)
    plan = load_plan(args, logs)
    targets = [report.DIRECT, *([nginx.LABEL] if args.nginx else [])]
    targets += [config.label for config in configs]
    lines = header(args, configs, now.strftime("%Y-%m-%d %H:%M")) + notes
    lines.append(f"- load average at the start (1, 5, 15 min): {load_average()}")
    text = report.render(lines, runs, targets, plan)
    text += "\n" + prefix_cost.report()
    result = args.out / f"results-{stamp}.md"
    result.write_text(text)
    (args.out / f"results-{stamp}.json").write_text(
        json.dumps([run.to_json() for run in runs], indent=1, default=str)
    )
    print(text)
    print(f"bench: wrote {result}", file=sys.stderr)
    busiest = max(runs, key=lambda run: run.other_cpu_pct)
    if busiest.other_cpu_pct > 10:
        print(
            f"bench: WARNING: other processes used up to {busiest.other_cpu_pct:.0f} % of a core "
            f"during a run ({busiest.scenario}, {busiest.target}): the numbers are noisy",
            file=sys.stderr,
        )
    invalid = [run for run in runs if run.load.invalid]
    if invalid:
        print(
            f"\nBENCH FAILED: {sum(r.load.invalid for r in invalid)} invalid responses",
            file=sys.stderr,
        )
        for run in invalid:
            print(
                f"  {run.scenario} {run.target} rep {run.repetition + 1}: {run.load.invalid} "
                f"invalid, e.g. {run.load.examples[:3]}",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
