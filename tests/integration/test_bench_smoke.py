"""The bench end to end in its quick form: every response valid and the table written.

Correctness only, never timings. Skips when wrk or taskset is missing (`make bench` installs wrk).
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


def test_quick_bench_checks_every_response_and_writes_the_table(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
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
