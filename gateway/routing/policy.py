"""Pure choice of a worker for one request among a model's workers.

Load of a worker = max(the gateway's own in-flight / its cap, the worker's saturation from its
metrics). Saturation that is missing or stale counts as half-loaded: unknown is not idle. The
least-loaded worker that takes traffic wins, ties taken in turn. A session key names a preferred
worker, kept while it is not saturated. Cache-aware routing prefers the worker whose prefix
cache is expected to hold the most of the prompt's leading blocks, unless it queues clearly more
than the least loaded (never a saturated or unhealthy one). Optionally a prompt-length bucket
names a worker, kept while it is not clearly busier than the least loaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.record import RouteReason
from gateway.routing.registry import ModelRoute, Worker
from gateway.routing.scrape import WAITING_FULL

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
    prefix: Sequence[int] | None = None  # the prompt's block hashes, for cache-aware routing
    tag: str | None = None  # the request's tag on the worker's KV-cache events (precise mode)
    # Only these workers may serve it: the one holding a stored response, or those with the
    # LoRA adapter it names loaded.
    only: frozenset[Worker] | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """The worker for a request, why (a bounded label), and how many of the prompt's leading
    blocks the prefix index expects that worker's cache to hold."""

    worker: Worker
    reason: RouteReason
    cached_blocks: int = 0


def load_of(worker: Worker, cap: int, now: float, stale_after: float) -> float:
    saturation = worker.known_saturation(now, stale_after)
    if saturation is None:
        saturation = UNKNOWN_SATURATION
    return max(worker.inflight / cap, saturation)


def pressure(worker: Worker, cap: int, now: float, stale_after: float) -> float:
    """How much a worker queues: the gateway's in-flight share and vLLM's own waiting queue,
    without the KV cache's fill (a worker holding many cached prefixes is not busier for it;
    a full cache is already `saturated`)."""
    fresh = worker.scraped_at is not None and now - worker.scraped_at <= stale_after
    return max(worker.inflight / cap, worker.waiting / WAITING_FULL if fresh else 0.0)


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
) -> Choice | None:
    """The worker to use, or None when every one that takes traffic is saturated.

    Raises NoWorker when none takes traffic at all. `allow_saturated` (retries) takes the least
    loaded even when it is saturated.
    """
    cap = route.max_inflight_per_worker
    workers = route.workers
    if prefer is not None and prefer.only is not None:
        exclude = exclude | frozenset(w for w in workers if w not in prefer.only)
    if len(workers) == 1 and not exclude:  # the common case, kept cheap
        only = workers[0]
        if not only.takes_traffic(now):
            raise NoWorker
        if not allow_saturated and saturated(only, cap, now, stale_after):
            return None
        return Choice(only, "only")
    live = [w for w in workers if w not in exclude and w.takes_traffic(now)]
    if not live:
        raise NoWorker
    if allow_saturated:
        return Choice(_least_loaded(route, live, cap, now, stale_after), "retry")
    live = [w for w in live if not saturated(w, cap, now, stale_after)]
    if not live:
        return None
    if prefer is not None:
        preferred = _preferred(route, live, prefer, cap, now, stale_after)
        if preferred is not None:
            return preferred
    return Choice(_least_loaded(route, live, cap, now, stale_after), "load")


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


def _preferred(  # noqa: PLR0917 (the choice's whole context, from choose())
    route: ModelRoute,
    live: list[Worker],
    prefer: Preference,
    cap: int,
    now: float,
    stale_after: float,
) -> Choice | None:
    if prefer.session is not None:
        return Choice(max(live, key=lambda w: _rendezvous(prefer.session or "", w.name)), "session")
    if prefer.prefix and route.prefix is not None:
        return _by_cache(route, live, prefer.prefix, cap, now, stale_after)
    if prefer.length_bucket is not None:
        ordered = sorted(live, key=lambda w: w.name)
        target = ordered[prefer.length_bucket * len(ordered) // max(prefer.buckets, 1)]
        lightest = min(load_of(w, cap, now, stale_after) for w in live)
        if load_of(target, cap, now, stale_after) <= lightest + LENGTH_SLACK:
            return Choice(target, "length")
    return None


def _by_cache(  # noqa: PLR0917 (the choice's whole context, from choose())
    route: ModelRoute,
    live: list[Worker],
    prefix: Sequence[int],
    cap: int,
    now: float,
    stale_after: float,
) -> Choice:
    """The worker expected to hold the most leading blocks, unless it queues clearly more than
    the least loaded (its pressure higher by more than the balance threshold): then load wins."""
    assert route.prefix is not None
    cached = route.prefix.index.match(prefix, route.prefix.slots)
    least = _least_loaded(route, live, cap, now, stale_after)
    best, blocks = least, cached[least.slot]
    for worker in live:
        if cached[worker.slot] > blocks:
            best, blocks = worker, cached[worker.slot]
    if blocks < route.prefix.min_blocks:
        return Choice(least, "load", blocks)
    if best is not least:
        busier = pressure(best, cap, now, stale_after) - pressure(least, cap, now, stale_after)
        if busier > route.prefix.balance:
            return Choice(least, "fallback", cached[least.slot])
    return Choice(best, "cache", blocks)


def _rendezvous(session: str, worker: str) -> int:
    """Highest-random-weight hashing: every replica maps a session to the same worker, and
    losing a worker only moves the sessions that were on it."""
    digest = hashlib.blake2b(f"{session}\0{worker}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")
