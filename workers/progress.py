"""The start-up lines `make run` (`python -m workers run` / `up`) prints on stdout: each worker
starting (name, model, port), a reminder while engines warm up, the moment each is ready, and
the gateway's. Pure formatting, so the wording is unit-tested.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from workers.cpu_plan import REPO_ROOT, WorkerLaunch

# While engines warm up (a minute or more on CPU), say so this often.
WAITING_EVERY_SECONDS = 15.0


def print_line(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def worker_starting(launch: WorkerLaunch) -> str:
    return (
        f"worker {launch.name} (model {launch.model.name}): starting on port {launch.port}, "
        f"log {_shown(launch.log_path)}"
    )


def worker_ready(launch: WorkerLaunch, seconds: float) -> str:
    return (
        f"worker {launch.name} (model {launch.model.name}): ready after {seconds:.0f} s, "
        f"{launch.base_url}/v1"
    )


def still_waiting(names: Sequence[str], seconds: float) -> str:
    waiting = ", ".join(names)
    return (
        f"waiting for {waiting} ({seconds:.0f} s so far; an engine warms up for a minute or more)"
    )


def gateway_starting(url: str) -> str:
    return f"gateway: starting on {url}"


def gateway_ready(url: str, seconds: float, workers: int) -> str:
    return (
        f"gateway: ready after {seconds:.0f} s, {url}/v1 in front of {workers} worker(s); "
        "Ctrl-C stops everything"
    )
