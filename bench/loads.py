"""The two load generators as pinned subprocesses: wrk (non-streaming) and bench.streamload (SSE).

Both return a LoadResult with the same fields, invalid responses counted and described.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import ROOT, pinned

LUA = Path(__file__).with_name("post.lua")


@dataclass(slots=True)
class LoadResult:
    requests: int  # valid answers completed in the measured window
    invalid: int  # bad answers over the whole run, plus socket errors and timeouts
    examples: list[str]
    elapsed_s: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float = math.nan
    ttft_p99_ms: float = math.nan
    chunks: int = 0  # data events relayed, [DONE] not counted
    peak_open: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def run_wrk(
    url: str, connections: int, seconds: int, cpus: str, body_file: Path, api_key: str = ""
) -> LoadResult:
    """wrk -c `connections` for `seconds`; socket errors and bad answers count as invalid."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
    args += ["-s", str(LUA), url]
    env = {"BENCH_BODY_FILE": str(body_file), "BENCH_API_KEY": api_key}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    done = subprocess.run(
        pinned(cpus, args), cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    summary: dict[str, Any] | None = None
    examples: list[str] = []
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            summary = json.loads(line.removeprefix("BENCH_JSON "))
        elif line.startswith("BENCH_EXAMPLE "):
            examples.append(line.removeprefix("BENCH_EXAMPLE "))
    if done.returncode != 0 or summary is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    # A non-2xx answer is in both `invalid` (the Lua check) and status_errors: count it once.
    socket_keys = ("connect_errors", "read_errors", "write_errors", "timeouts")
    socket_errors = sum(summary[k] for k in socket_keys)
    if socket_errors:
        examples.append("socket errors: " + ", ".join(f"{k}={summary[k]}" for k in socket_keys))
    return LoadResult(
        requests=summary["requests"] - summary["invalid"],
        invalid=summary["invalid"] + socket_errors,
        examples=examples,
        elapsed_s=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        extra=summary,
    )


def run_streamload(
    url: str,
    cpus: str,
    chunks: int,
    concurrency: int,
    *,
    seconds: float | None = None,
    per_connection: int | None = None,
    ramp: float = 0.0,
    think_ms: float = 0.0,
    warmup: float = 0.0,
    timeout: float = 60.0,
    api_key: str = "",
    on_mark: Callable[[str, int], None] | None = None,
) -> LoadResult:
    """bench.streamload against `url` (a base URL: /v1/chat/completions is used).

    `on_mark(name, pid)` is called when the measurement window opens ("start") and closes
    ("end"), so the caller can read CPU times exactly around it.
    """
    args = [sys.executable, "-m", "bench.streamload", "--url", url + "/v1/chat/completions"]
    args += ["--concurrency", str(concurrency), "--chunks", str(chunks)]
    args += ["--ramp", f"{ramp:g}", "--think-ms", f"{think_ms:g}", "--timeout", f"{timeout:g}"]
    if api_key:
        args += ["--api-key", api_key]  # on a command line, but of a throwaway bench key
    if seconds is not None:
        args += ["--duration", f"{seconds:g}", "--warmup", f"{warmup:g}"]
    else:
        args += ["--per-connection", str(per_connection or 1)]
    # stderr to a file: a pipe nobody reads while stdout is followed could fill up and block.
    with (
        tempfile.TemporaryFile("w+") as stderr,
        subprocess.Popen(
            pinned(cpus, args), cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
        ) as proc,
    ):
        assert proc.stdout is not None
        last = ""
        for line in proc.stdout:
            if line.startswith("MARK "):
                if on_mark is not None:
                    on_mark(line.split()[1], proc.pid)
            elif line.strip():
                last = line
        code = proc.wait()
        stderr.seek(0)
        errors = stderr.read()
    if code not in (0, 1) or not last:
        raise RuntimeError(f"streamload failed ({code}): {errors.strip()[-800:]}")
    summary: dict[str, Any] = json.loads(last)
    window: dict[str, Any] = summary["window"]

    def ms(section: str, key: str) -> float:
        value = window[section][key]
        return math.nan if value is None else float(value)

    return LoadResult(
        requests=window["requests"],
        invalid=summary["invalid"],
        examples=list(summary["examples"]),
        elapsed_s=window["elapsed_s"],
        p50_ms=ms("latency_ms", "p50"),
        p99_ms=ms("latency_ms", "p99"),
        ttft_p50_ms=ms("ttft_ms", "p50"),
        ttft_p99_ms=ms("ttft_ms", "p99"),
        chunks=window["chunks"],
        peak_open=summary["peak_open"],
        extra=summary,
    )
