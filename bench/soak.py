"""`python -m bench soak --minutes N`: a long mixed run against one gateway, memory and files
watched.

Each round (20 s) sends non-streaming load (wrk), paced streams (bench.streamload), and a set of
hostile or broken requests whose answers are checked (bad JSON, an unknown model, a wrong key,
an oversized header, a stream the client cuts, a connection that sends nothing). After each round
the gateway's RSS and open files are read. Reports the curve and exits non-zero on any error.
The gateway runs with API keys and Redis limits on, as in production.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from bench.loads import run_streamload, run_wrk
from bench.procs import ROOT, Service, rss_bytes, start_upstream
from bench.targets import BASE_ENV, MODEL, GatewayConfig, new_api_key, start_gateway

OUT = ROOT / "bench" / "out"
MIB = 2**20
ROUND_S = 20.0
BODY = orjson.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Soak, please."}], "max_tokens": 16}
)


@dataclass(frozen=True, slots=True)
class Sample:
    minute: float
    requests: int  # valid answers so far (non-streaming + streams + checked hostile ones)
    errors: int  # so far
    rss: int
    open_files: int


def open_files(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


def _exchange(port: int, raw: bytes) -> bytes:
    """Send `raw` (a request with Connection: close) and read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with contextlib.suppress(OSError):  # refused mid-send (an oversized header)
            sock.sendall(raw)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass  # closed with our bytes unread: what came before still counts
        return b"".join(chunks)


def _post(path: str, body: bytes, key: str, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Length: {len(body)}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


def hostile_round(port: int, key: str) -> tuple[int, list[str]]:
    """The broken and hostile requests of one round: (how many answered as they should, errors)."""
    chat = "/v1/chat/completions"
    cases: list[tuple[str, bytes, bytes]] = [
        ("bad json", _post(chat, b'{"model": ', key), b" 400 "),
        ("unknown model", _post(chat, BODY.replace(MODEL.encode(), b"nope"), key), b" 404 "),
        ("wrong key", _post(chat, BODY, "sk-wrong"), b" 401 "),
        ("huge header", _post(chat, BODY, key, b"X-Big: " + b"a" * 200_000 + b"\r\n"), b" 431 "),
    ]
    good, errors = 0, []
    for name, raw, expected in cases:
        try:
            answer = _exchange(port, raw)
        except OSError as exc:
            errors.append(f"{name}: {type(exc).__name__}")
            continue
        status_line = answer.split(b"\r\n", 1)[0]
        if expected in status_line + b" " and b'"error"' in answer:
            good += 1
        elif name == "huge header" and not answer:
            good += 1  # a clean close is allowed where the answer cannot be read back
        else:
            errors.append(f"{name}: {status_line[:60]!r}")
    stream = orjson.loads(BODY) | {"stream": True}
    try:  # a stream cut by the client after its first bytes
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(_post(chat, orjson.dumps(stream), key))
            if not sock.recv(1024).startswith(b"HTTP/1.1 200"):
                errors.append("cut stream: no 200")
            else:
                good += 1
    except OSError as exc:
        errors.append(f"cut stream: {type(exc).__name__}")
    # A connection that sends nothing: the gateway closes it at its header deadline.
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    silent.close()
    return good, errors


def soak(args: argparse.Namespace) -> int:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    logs = args.out / f"soak-logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    env = {
        **BASE_ENV,
        "GATEWAY_AUTH_ENABLED": "true",
        "GATEWAY_REDIS_URL": args.redis_url,
        "GATEWAY_LOG_REQUESTS": "true",
        # The fake worker shares a core with the load generators (and, on a shared machine,
        # with whatever else runs): generous probe and Redis timeouts keep the soak about the
        # gateway's own errors, memory and files, not the host's scheduling (ejection timing
        # has tests of its own).
        "GATEWAY_HEALTH_TIMEOUT": "5",
        "GATEWAY_REDIS_TIMEOUT": "1",
    }
    limits = {"rpm": 100_000_000, "tpm": 1_000_000_000, "max_concurrent": 100_000}
    config = GatewayConfig("soak", env, 1, limits)
    key = new_api_key()
    services: list[Service] = []
    samples: list[Sample] = []
    errors: list[str] = []
    requests = failed = 0
    try:
        upstream, upstream_url = start_upstream(logs, args.load_cpus, 16, 10.0)
        services.append(upstream)
        gateway, url = start_gateway(config, upstream_url, args.gateway_cpus, logs, key)
        services.append(gateway)
        port = int(url.rsplit(":", 1)[1])
        with tempfile.NamedTemporaryFile("wb", suffix=".json") as body_file:
            body_file.write(BODY)
            body_file.flush()
            started = time.monotonic()
            end = started + args.minutes * 60
            while time.monotonic() < end:
                round_start = time.monotonic()
                plain = run_wrk(
                    url + "/v1/chat/completions", 4, 4, args.load_cpus, Path(body_file.name), key
                )
                streams = run_streamload(
                    url, args.load_cpus, 16, 16, seconds=6, timeout=60, api_key=key
                )
                good, bad = hostile_round(port, key)
                requests += plain.requests + streams.requests + good
                for result in (plain, streams):
                    failed += result.invalid
                    errors.extend(result.examples[: result.invalid])
                failed += len(bad)
                errors.extend(bad)
                if gateway.popen.poll() is not None:
                    failed += 1
                    errors.append("the gateway died")
                    break
                minute = (time.monotonic() - started) / 60
                sample = Sample(
                    minute, requests, failed, rss_bytes(gateway.pid), open_files(gateway.pid)
                )
                samples.append(sample)
                print(
                    f"soak: {minute:6.1f} min  {requests:>9,} ok  {failed} errors  "
                    f"RSS {sample.rss / MIB:6.1f} MiB  {sample.open_files} open files",
                    file=sys.stderr,
                    flush=True,
                )
                rest = ROUND_S - (time.monotonic() - round_start)
                time.sleep(max(0.0, min(rest, end - time.monotonic())))
    finally:
        for service in reversed(services):
            service.stop()
    text = report(samples, errors, args)
    result = args.out / f"soak-{stamp}.md"
    result.write_text(text)
    print(text)
    print(f"bench: wrote {result}", file=sys.stderr)
    return 1 if errors or not samples else 0


def report(samples: list[Sample], errors: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"# Soak: {args.minutes} minutes, one gateway process, keys + Redis limits on",
        "",
        "Probe timeout 5 s, Redis timeout 1 s (the fake worker shares a core with the load).",
        "",
        "| minute | requests ok | errors | RSS MiB | open files |",
        "|---:|---:|---:|---:|---:|",
    ]
    step = max(1, len(samples) // 12)
    shown = samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else [])
    for s in shown:
        lines.append(
            f"| {s.minute:.1f} | {s.requests:,} | {s.errors} | {s.rss / MIB:.1f} | {s.open_files} |"
        )
    if samples:
        warm = next((s for s in samples if s.minute >= 2.0), samples[0])
        last = samples[-1]
        lines += [
            "",
            f"- requests answered as expected: {last.requests:,}; errors: {last.errors}",
            f"- RSS after warm-up (minute {warm.minute:.1f}): {warm.rss / MIB:.1f} MiB; at the "
            f"end: {last.rss / MIB:.1f} MiB; growth {(last.rss - warm.rss) / MIB:+.1f} MiB; "
            f"peak {max(s.rss for s in samples) / MIB:.1f} MiB",
            f"- open files after warm-up: {warm.open_files}; at the end: {last.open_files}; "
            f"max {max(s.open_files for s in samples)}",
        ]
    if errors:
        lines += ["", "Errors (examples):", *(f"- {e}" for e in errors[:10])]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--gateway-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--out", type=Path, default=OUT)
    return soak(parser.parse_args(argv))
