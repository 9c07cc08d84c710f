"""A gateway process that died stops counting in the live gauges; the living ones stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.observe.metrics import forget_dead_processes


def test_live_gauges_of_dead_processes_are_dropped_and_counters_kept(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead = int(gone.stdout)
    alive = os.getpid()
    for name in (
        f"gauge_livemax_{dead}.db",
        f"gauge_livesum_{dead}.db",
        f"counter_{dead}.db",
        f"gauge_livemax_{alive}.db",
    ):
        (tmp_path / name).write_bytes(b"")
    forget_dead_processes(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"counter_{dead}.db",
        f"gauge_livemax_{alive}.db",
    ]
