"""Worker choice: least loaded by in-flight and the worker's own saturation, unknown is not idle,
saturated and unhealthy workers skipped, session affinity and length steering."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing.policy import NoWorker, Preference, choose
from gateway.routing.registry import ModelRoute, Worker

NOW = 1000.0
STALE = 3.0


def route(*inflight: int, cap: int = 10) -> ModelRoute:
    workers = tuple(
        Worker(f"w{i}", "m", f"http://w{i}", n, scraped_at=NOW) for i, n in enumerate(inflight)
    )
    return ModelRoute("m", workers, max_inflight_per_worker=cap)


def pick(r: ModelRoute, **kwargs: object) -> Worker:
    choice = choose(r, NOW, STALE, **kwargs)  # type: ignore[arg-type]
    assert choice is not None
    return choice.worker


def test_idle_workers_share_requests_evenly() -> None:
    r = route(0, 0, 0)
    assert Counter(pick(r).name for _ in range(30)) == {"w0": 10, "w1": 10, "w2": 10}


def test_least_in_flight_wins() -> None:
    r = route(3, 1, 2)
    assert {pick(r).name for _ in range(5)} == {"w1"}


def test_worker_reporting_a_queue_loses_to_an_idle_one() -> None:
    r = route(0, 0)
    r.workers[0].saturation = 0.6  # e.g. 3 requests waiting inside vLLM
    assert {pick(r).name for _ in range(4)} == {"w1"}


def test_stale_load_counts_as_unknown_not_idle() -> None:
    r = route(0, 4)  # w1 is 40 % loaded, and its numbers are fresh
    r.workers[0].scraped_at = NOW - 10  # w0's are stale: half-loaded, so w1 wins
    assert pick(r).name == "w1"
    r.workers[1].inflight = 7  # 70 % loaded: now the unknown one is the better bet
    assert pick(r).name == "w0"


def test_saturated_workers_are_skipped_and_all_saturated_means_wait() -> None:
    r = route(10, 2)
    assert {pick(r).name for _ in range(3)} == {"w1"}
    r.workers[1].saturation = 1.0  # vLLM says it is full
    assert choose(r, NOW, STALE) is None
    assert pick(r, allow_saturated=True).name in {"w0", "w1"}


def test_single_saturated_worker_means_wait() -> None:
    r = route(10)
    assert choose(r, NOW, STALE) is None
    r.workers[0].inflight = 9
    assert pick(r).name == "w0"


def test_down_and_ejected_workers_take_nothing() -> None:
    r = route(0, 0, 5)
    r.workers[0].up = False
    r.workers[1].ejected_until = NOW + 1
    assert {pick(r).name for _ in range(4)} == {"w2"}
    r.workers[2].up = False
    with pytest.raises(NoWorker):
        choose(r, NOW, STALE)
    r.workers[1].ejected_until = NOW  # the window is over
    assert pick(r).name == "w1"


def test_excluded_workers_are_not_retried() -> None:
    r = route(0, 5)
    assert pick(r, exclude=frozenset({r.workers[0]})).name == "w1"
    with pytest.raises(NoWorker):
        choose(r, NOW, STALE, exclude=frozenset(r.workers))


def test_a_session_sticks_to_one_worker_and_moves_only_when_it_must() -> None:
    r = route(0, 0, 0, 0)
    sessions = [f"s{i}" for i in range(200)]
    first = {s: pick(r, prefer=Preference(session=s)).name for s in sessions}
    assert len(set(first.values())) == 4  # sessions spread over every worker
    assert first == {s: pick(r, prefer=Preference(session=s)).name for s in sessions}
    r.workers[2].up = False  # only the sessions that were on w2 move
    moved = {s for s in sessions if pick(r, prefer=Preference(session=s)).name != first[s]}
    assert moved == {s for s in sessions if first[s] == "w2"}
    r.workers[2].up = True
    r.workers[3].inflight = 10  # saturated: its sessions go elsewhere for now
    assert all(
        pick(r, prefer=Preference(session=s)).name != "w3" for s in sessions if first[s] == "w3"
    )


def test_length_buckets_steer_to_their_own_worker_unless_clearly_busier() -> None:
    r = route(0, 0)
    short, long = Preference(length_bucket=0, buckets=2), Preference(length_bucket=1, buckets=2)
    assert {pick(r, prefer=short).name for _ in range(4)} == {"w0"}
    assert {pick(r, prefer=long).name for _ in range(4)} == {"w1"}
    r.workers[1].inflight = 5  # half loaded while w0 is idle: long prompts spill over
    assert pick(r, prefer=long).name == "w0"
