"""`python -m bench soak` in one short round: the mixed load, the hostile checks and the report
work, and a clean gateway shows no errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which("wrk") is None, reason="not installed: wrk"),
    pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="pins to CPUs 0 and 1"),
]


def test_a_short_soak_reports_memory_files_and_no_errors(tmp_path: Path, redis_url: str) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "soak", "--minutes", "0.05"),
            *("--redis-url", redis_url, "--out", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "errors: 0" in done.stdout
    assert "| minute | requests ok | errors | RSS MiB | open files |" in done.stdout
    assert "RSS after warm-up" in done.stdout
