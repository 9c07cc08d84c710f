"""The bench end to end in its quick form: every response valid and the table written; the
paced scenarios beside nginx and the floor, `bench fleet` and `bench profile` likewise.

Correctness only, never timings. Skips when wrk or taskset is missing (`make bench` installs wrk);
nginx and py-spy are skipped for when absent (`make tools`, the dev extra).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.procs import Service, start_upstream
from tests.procs import ROOT

_MISSING = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
_CPUS = os.sched_getaffinity(0)

pytestmark = [
    pytest.mark.skipif(
        bool(_MISSING), reason=f"not installed: {', '.join(_MISSING)} (apt-get install -y wrk)"
    ),
    pytest.mark.skipif(not {0, 1} <= _CPUS, reason="the bench pins to CPUs 0 and 1"),
]


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[str]:
    service: Service
    service, url = start_upstream(tmp_path, "1", chunks=3, gap_ms=0)
    try:
        yield url
    finally:
        service.stop()


def _bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_quick_bench_checks_every_response_and_writes_the_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)),
            *("--scenarios", "c1,c64,stream"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (table,) = tmp_path.glob("results-*.md")
    text = table.read_text()
    assert text in result.stdout
    for heading in ("## c1:", "## c64:", "## stream:"):
        assert heading in text
    rows = [line for line in text.splitlines() if line.startswith(("| direct", "| gateway"))]
    assert len(rows) == 6
    assert all(row.endswith("| 0 |") for row in rows)  # the invalid column
    (raw,) = tmp_path.glob("results-*.json")
    runs = json.loads(raw.read_text())
    assert len(runs) == 6
    for run in runs:
        assert run["load"]["invalid"] == 0
        assert run["load"]["requests"] > 0
    streams = [run for run in runs if run["scenario"] == "stream"]
    for run in streams:  # 32 chunks and the usage chunk, in every stream
        assert set(run["load"]["extra"]["chunk_counts"]) == {"33"}


def test_paced_scenarios_beside_nginx_and_the_floor(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
    result = _bench(
        *("--quick", "--out", str(tmp_path), "--scenarios", "paced128,paced1024"),
        *("--chunks", "4", "--nginx", "--floor"),
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (table,) = tmp_path.glob("results-*.md")
    text = table.read_text()
    for heading in ("## paced128: 128 paced streams", "## paced1024: 1024 paced streams"):
        assert heading in text
    assert "offered 21,333 chunks/s" in text  # 128 x 5 events over 3 steps of 10 ms
    targets = ["| direct", "| gateway `bare`", "| gateway `floor`", "| gateway `raw-floor`"]
    if nginx:
        targets.append("| nginx (plain proxy)")
    else:
        assert "nginx: not installed" in text
    for target in targets:
        rows = [line for line in text.splitlines() if line.startswith(target)]
        assert len(rows) == 2, target
        assert all(row.endswith("| 0 |") for row in rows)
    assert "**added by `bare`**" in text
    runs = json.loads(next(tmp_path.glob("results-*.json")).read_text())
    assert {run["streams"] for run in runs} == {128, 1024}
    assert all(set(run["load"]["extra"]["chunk_counts"]) == {"5"} for run in runs)


def test_fleet_steps_the_rate_for_one_and_two_processes(tmp_path: Path) -> None:
    result = _bench(
        *("fleet", "--quick", "--out", str(tmp_path), "--chunks", "4"),
        # Correctness here, not timings: every step passes.
        *("--limit-ms", "1000000", "--min-share", "0"),
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = next(tmp_path.glob("fleet-*.md")).read_text()
    steps = json.loads(next(tmp_path.glob("fleet-*.json")).read_text())
    assert [(s["processes"], s["streams"]) for s in steps] == [(1, 8), (1, 16), (2, 8), (2, 16)]
    assert all(s["invalid"] == 0 and s["chunks_per_s"] > 0 for s in steps)
    assert "| processes | tokens/s sustained (TTFT added p99 within the limit) |" in text


@pytest.mark.skipif(
    not (shutil.which("py-spy") or Path(sys.executable).with_name("py-spy").exists()),
    reason="py-spy is not installed (pip install -e '.[dev]')",
)
def test_profile_writes_the_top_functions(tmp_path: Path) -> None:
    result = _bench(
        *("profile", "--out", str(tmp_path), "--seconds", "1", "--streams", "8"),
        *("--chunks", "4", "--top", "5"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = next(tmp_path.glob("profile-*.md")).read_text()
    assert "### Own time" in text
    assert "### Total time" in text
    assert "samples." in text
    assert next(tmp_path.glob("profile-*.txt")).stat().st_size > 0


def _streamload(url: str, chunks: int) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench.streamload", "--url", url, "-c", "2"),
            *("--per-connection", "3", "--chunks", str(chunks)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    summary: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return done.returncode, summary


def test_streamload_fails_on_a_wrong_chunk_count(upstream: str) -> None:
    code, summary = _streamload(upstream, 3)
    assert (code, summary["valid"], summary["invalid"]) == (0, 6, 0)
    code, summary = _streamload(upstream, 4)
    assert (code, summary["valid"], summary["invalid"]) == (1, 0, 6)
    assert summary["examples"] == ["4 chunks, expected 5"] * 5


@pytest.mark.parametrize(
    ("body", "events"),
    [
        (b'{"model":"m","stream":true}', 4),  # 3 chunks + [DONE]
        (b'{"model": "m", "stream": true, "stream_options": {"include_usage": true}}', 5),
        (b'{"model":"m","stream":true,"stream_options":{"include_usage":true}}', 5),
        (b'{"model": "m", "stream": false}', 0),
        (b'{"model": "m", "messages": [{"role": "user", "content": "\\"stream\\": true"}]}', 0),
    ],
)
def test_upstream_reads_stream_flags_compact_or_spaced(
    upstream: str, body: bytes, events: int
) -> None:
    response = httpx.post(upstream + "/v1/chat/completions", content=body)
    assert response.status_code == 200
    if events:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line for line in response.text.split("\n\n") if line]
        assert len(data) == events
        assert data[-1] == "data: [DONE]"
    else:
        assert response.json()["usage"]["completion_tokens"] == 3
