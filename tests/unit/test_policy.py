"""Worker choice: least in-flight first, ties taken in turn."""

from __future__ import annotations

from collections import Counter

from gateway.routing.policy import pick
from gateway.routing.registry import ModelRoute, Worker


def route(*inflight: int) -> ModelRoute:
    return ModelRoute(
        "m", tuple(Worker(f"w{i}", "m", f"http://w{i}", n) for i, n in enumerate(inflight))
    )


def test_idle_workers_share_requests_evenly() -> None:
    r = route(0, 0, 0)
    assert Counter(pick(r).name for _ in range(30)) == {"w0": 10, "w1": 10, "w2": 10}


def test_least_loaded_worker_wins() -> None:
    r = route(3, 1, 2)
    assert {pick(r).name for _ in range(5)} == {"w1"}


def test_single_worker_is_always_picked() -> None:
    assert pick(route(9)).name == "w0"
