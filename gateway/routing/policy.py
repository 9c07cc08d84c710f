"""Pure choice of a worker for one request among a model's workers.

Load of a worker = max(the gateway's own in-flight / its cap, the worker's saturation from its
metrics). Saturation that is missing or stale counts as half-loaded: unknown is not idle. The
least-loaded worker that takes traffic wins, ties taken in turn; optionally a session key or a
prompt-length bucket names a preferred worker, kept while it is not saturated (or, for length,
not clearly busier than the least loaded).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from gateway.routing.registry import ModelRoute, Worker

UNKNOWN_SATURATION = 0.5
# A length-bucket's worker is kept while its load is within this much of the least loaded.
LENGTH_SLACK = 0.25


class NoWorker(Exception):
    """No worker of the model takes traffic (all down or ejected)."""


@dataclass(frozen=True, slots=True)
class Preference:
    """What may steer a request to a particular worker."""

    session: str | None = None  # x-session-id header, or the body's `user`
    length_bucket: int | None = None  # index of the prompt's size bucket, when steering is on
    buckets: int = 1


def load_of(worker: Worker, cap: int, now: float, stale_after: float) -> float:
    saturation = worker.known_saturation(now, stale_after)
    if saturation is None:
        saturation = UNKNOWN_SATURATION
    return max(worker.inflight / cap, saturation)


def saturated(worker: Worker, cap: int, now: float, stale_after: float) -> bool:
    saturation = worker.known_saturation(now, stale_after)
    return worker.inflight >= cap or (saturation is not None and saturation >= 1.0)


def choose(
    route: ModelRoute,
    now: float,
    stale_after: float,
    *,
    prefer: Preference | None = None,
    exclude: frozenset[Worker] = frozenset(),
    allow_saturated: bool = False,
) -> Worker | None:
    """The worker to use, or None when every one that takes traffic is saturated.

    Raises NoWorker when none takes traffic at all. `allow_saturated` (retries) takes the least
    loaded even when it is saturated.
    """
    cap = route.max_inflight_per_worker
    workers = route.workers
    if len(workers) == 1 and not exclude:  # the common case, kept cheap
        only = workers[0]
        if not only.takes_traffic(now):
            raise NoWorker
        if not allow_saturated and saturated(only, cap, now, stale_after):
            return None
        return only
    live = [w for w in workers if w not in exclude and w.takes_traffic(now)]
    if not live:
        raise NoWorker
    if not allow_saturated:
        live = [w for w in live if not saturated(w, cap, now, stale_after)]
        if not live:
            return None
    if prefer is not None:
        preferred = _preferred(live, prefer, cap, now, stale_after)
        if preferred is not None:
            return preferred
    return _least_loaded(route, live, cap, now, stale_after)


def _least_loaded(
    route: ModelRoute, live: list[Worker], cap: int, now: float, stale_after: float
) -> Worker:
    count = len(live)
    start = route.turn % count
    route.turn = start + 1
    best = live[start]
    best_load = load_of(best, cap, now, stale_after)
    for offset in range(1, count):
        candidate = live[(start + offset) % count]
        load = load_of(candidate, cap, now, stale_after)
        if load < best_load:
            best, best_load = candidate, load
    return best


def _preferred(
    live: list[Worker], prefer: Preference, cap: int, now: float, stale_after: float
) -> Worker | None:
    if prefer.session is not None:
        return max(live, key=lambda w: _rendezvous(prefer.session or "", w.name))
    if prefer.length_bucket is not None:
        ordered = sorted(live, key=lambda w: w.name)
        target = ordered[prefer.length_bucket * len(ordered) // max(prefer.buckets, 1)]
        lightest = min(load_of(w, cap, now, stale_after) for w in live)
        if load_of(target, cap, now, stale_after) <= lightest + LENGTH_SLACK:
            return target
    return None


def _rendezvous(session: str, worker: str) -> int:
    """Highest-random-weight hashing: every replica maps a session to the same worker, and
    losing a worker only moves the sessions that were on it."""
    digest = hashlib.blake2b(f"{session}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
