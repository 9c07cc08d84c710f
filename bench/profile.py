"""`python -m bench profile [--native] [--wrk N]`: where one gateway process spends its CPU under
paced streams (or, with --wrk, N connections of non-streaming requests), sampled with py-spy (a
dev dependency) and summed up per function.

Starts the fake upstream and one gateway (pinned as in the bench), runs the paced load
(bench.streamload: N streams, one chunk per stream every --gap-ms) or wrk, records the gateway with
`py-spy record --format raw` and writes profile-STAMP.md (top functions by own and by total
samples) and the raw collapsed stacks beside it. --native adds C frames (uvloop, httptools,
the interpreter).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.loads import LoadResult, run_streamload, run_wrk
from bench.procs import Service, pinned, start_upstream
from bench.targets import (
    BASE_ENV,
    CHAT_BODY,
    GatewayConfig,
    new_api_key,
    parse_config_set,
    start_gateway,
)

OUT = Path(__file__).resolve().parent / "out"
_LINE = re.compile(r":\d+\)$")  # "fn (file.py:12)" -> "fn (file.py)"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench profile", description=__doc__)
    parser.add_argument("--native", action="store_true", help="sample C frames too")
    parser.add_argument(
        "--wrk",
        type=int,
        default=0,
        metavar="N",
        help="non-streaming load instead: wrk with N connections (the per-request path)",
    )
    parser.add_argument("--streams", type=int, default=128, help="open streams (default 128)")
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--gap-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds sampled")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument(
        "--config-set",
        default="bare",
        metavar="NAME:KEY=V,...",
        help="the gateway's configuration, as for python -m bench (default: bare)",
    )
    parser.add_argument("--top", type=int, default=25, help="functions listed per table")
    parser.add_argument("--gateway-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def summarize(raw: str, top: int) -> str:
    """Markdown: the `top` functions by own samples and by samples they are on the stack of."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return "no samples (is the gateway busy? does py-spy have ptrace rights?)\n"

    def table(counter: Counter[str], what: str) -> list[str]:
        rows = [f"| {what} % | function |", "|---|---|"]
        for frame, count in counter.most_common(top):
            name = frame.replace("|", "\\|")
            rows.append(f"| {100 * count / samples:.1f} | `{name}` |")
        return rows

    return "\n".join(
        [
            f"{samples:,} samples.",
            "",
            "### Own time (the function itself, not what it calls)",
            "",
            *table(own, "own"),
            "",
            "### Total time (on the stack)",
            "",
            *table(total, "total"),
            "",
        ]
    )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    spy = py_spy()
    if spy is None:
        print("bench profile: py-spy is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    logs = args.out / f"profile-logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    api_key = new_api_key()
    config: GatewayConfig = parse_config_set(args.config_set, dict(BASE_ENV), 1)
    services: list[Service] = []
    raw_file = args.out / f"profile-{stamp}.txt"
    try:
        upstream, upstream_url = start_upstream(logs, args.load_cpus, args.chunks, args.gap_ms)
        services.append(upstream)
        gateway, url = start_gateway(config, upstream_url, args.gateway_cpus, logs, api_key)
        services.append(gateway)
        command = [spy, "record", "--pid", str(gateway.pid), "--format", "raw"]
        command += ["--duration", f"{max(1, round(args.seconds))}", "--rate", str(args.rate)]
        # --gil: only samples holding the GIL, i.e. the Python work (an idle loop waiting in
        # epoll or the log thread waiting on its queue is not counted as busy).
        command += ["--output", str(raw_file), "--gil"]
        # py-spy reads C frames only with the process stopped for each sample.
        command.append("--native" if args.native else "--nonblocking")
        spy_done: list[subprocess.CompletedProcess[str]] = []

        def record(name: str, _pid: int) -> None:
            if name == "start":  # the load is warm: sample the measured window
                runner = threading.Thread(
                    target=lambda: spy_done.append(
                        subprocess.run(
                            pinned(args.load_cpus, command),
                            capture_output=True,
                            text=True,
                            check=False,
                        )
                    )
                )
                runner.start()
                threads.append(runner)

        threads: list[threading.Thread] = []
        if args.wrk:
            load = _wrk_load(args, url, api_key, logs, record)
            rate = load.requests / load.elapsed_s
            describe = f"wrk -c{args.wrk}, non-streaming; {rate:,.0f} req/s"
        else:
            load = _stream_load(args, url, api_key, record)
            describe = (
                f"{args.streams} streams of {args.chunks} chunks, one every {args.gap_ms:g} ms; "
                f"{load.chunks / load.elapsed_s:,.0f} chunks/s"
            )
        for thread in threads:
            thread.join()
    finally:
        for service in reversed(services):
            service.stop()
    if not spy_done or spy_done[0].returncode != 0 or not raw_file.exists():
        detail = spy_done[0].stderr[-800:] if spy_done else "py-spy did not run"
        print(f"bench profile: py-spy failed: {detail}", file=sys.stderr)
        return 1
    what = f"wrk -c{args.wrk}" if args.wrk else f"{args.streams} paced streams"
    text = "\n".join(
        [
            f"# Gateway profile: {what} ({stamp} UTC)",
            "",
            f"- gateway `{config.label}`: {config.describe()}",
            f"- load: {describe}; invalid {load.invalid}",
            f"- py-spy --gil {'--native ' if args.native else ''}at {args.rate} Hz for "
            f"{args.seconds:g} s; raw stacks: {raw_file.name}",
            "",
            summarize(raw_file.read_text(), args.top),
        ]
    )
    summary = args.out / f"profile-{stamp}.md"
    summary.write_text(text)
    print(text)
    print(f"bench profile: wrote {summary}", file=sys.stderr)
    return 1 if load.invalid else 0


def _stream_load(
    args: argparse.Namespace, url: str, api_key: str, on_mark: Callable[[str, int], None]
) -> LoadResult:
    stream_s = args.chunks * args.gap_ms / 1000
    return run_streamload(
        url,
        args.load_cpus,
        args.chunks,
        args.streams,
        seconds=args.seconds + 1,
        ramp=stream_s,
        think_ms=args.gap_ms,
        warmup=max(1.0, 2 * stream_s),
        api_key=api_key,
        on_mark=on_mark,
    )


def _wrk_load(
    args: argparse.Namespace,
    url: str,
    api_key: str,
    logs: Path,
    on_mark: Callable[[str, int], None],
) -> LoadResult:
    """wrk for the sampled seconds plus a second either side; py-spy starts after the first."""
    body_file = logs / "body.json"
    body_file.write_bytes(CHAT_BODY)
    timer = threading.Timer(1.0, on_mark, ("start", 0))
    timer.start()
    try:
        seconds = round(args.seconds) + 2
        chat = url + "/v1/chat/completions"
        return run_wrk(chat, args.wrk, seconds, args.load_cpus, body_file, api_key)
    finally:
        timer.cancel()
