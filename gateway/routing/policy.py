"""Pure choice of a worker among a model's workers: least in-flight, ties taken in turn."""

from __future__ import annotations

from gateway.routing.registry import ModelRoute, Worker


def pick(route: ModelRoute) -> Worker:
    workers = route.workers
    count = len(workers)
    if count == 1:
        return workers[0]
    start = route.turn % count
    route.turn = start + 1
    best = workers[start]
    for offset in range(1, count):
        candidate = workers[(start + offset) % count]
        if candidate.inflight < best.inflight:
            best = candidate
    return best
