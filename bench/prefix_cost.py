"""CPU the cache-aware routing index adds per request, measured in-process: the canonical prompt,
its chained block hashes, the match against a warm index and the record of the choice, for chat
bodies of 4 KB and 64 KB on a model with three workers.

`python -m bench prefix` runs it alone; `make bench` appends its table to the report.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

import orjson

from gateway.api.validation import parse_request
from gateway.request import Endpoint, RequestView
from gateway.routing.cache_aware import PrefixRouting, PrefixSettings
from gateway.routing.policy import Preference, choose
from gateway.routing.registry import ModelRoute, Worker

SIZES = (4 * 1024, 64 * 1024)
WORKERS = 3
SETTINGS = PrefixSettings(
    block_bytes=512, bytes_per_token=4.0, cache_tokens=200_000, balance=0.25, min_blocks=1
)
_WORDS = ["river", "stone", "cloud", "window", "garden", "lantern", "harbor", "meadow", "quiet"]


def _body(size: int, seed: int) -> bytes:
    """A chat request of about `size` bytes: a long system prompt and a short question."""
    rng = random.Random(seed)
    text = " ".join(rng.choices(_WORDS, k=size // 6))[: size - 200]
    messages = [
        {"role": "system", "content": text},
        {"role": "user", "content": f"question {seed}"},
    ]
    return orjson.dumps({"model": "m", "messages": messages, "stream": True})


def _route(settings: PrefixSettings = SETTINGS) -> ModelRoute:
    workers = tuple(
        Worker(f"w{i}", "m", f"http://w{i}", slot=i, scraped_at=0.0) for i in range(WORKERS)
    )
    prefix = PrefixRouting.for_workers(WORKERS, settings)
    return ModelRoute("m", workers, max_inflight_per_worker=256, prefix=prefix)


def _route_one(route: ModelRoute, view: RequestView) -> None:
    """What the request path does for cache-aware routing, and nothing else."""
    assert route.prefix is not None
    hashes = route.prefix.hashes(view)
    choice = choose(route, 0.0, 3.0, prefer=Preference(prefix=hashes))
    assert choice is not None
    route.prefix.note("m", choice.worker.name, choice.worker.slot, hashes)


def _plain(route: ModelRoute, view: RequestView) -> None:
    """The worker choice without cache-aware routing (what every request pays anyway)."""
    choice = choose(route, 0.0, 3.0)
    assert choice is not None


Step = Callable[[ModelRoute, RequestView], None]


def _timed(route: ModelRoute, views: list[RequestView], step: Step, requests: int) -> float:
    started = time.process_time()
    for n in range(requests):
        step(route, views[n % len(views)])
    return (time.process_time() - started) / requests * 1e6


def cost_us(size: int, settings: PrefixSettings = SETTINGS, requests: int = 3000) -> float:
    """CPU microseconds that cache-aware routing adds per request at this body size (its
    choice minus the plain choice), with an index warmed by earlier requests."""
    route = _route(settings)
    views = [parse_request(Endpoint.CHAT, _body(size, seed)) for seed in range(64)]
    for view in views:  # warm: every prompt seen once, so requests match their history
        _route_one(route, view)
    with_prefix = _timed(route, views, _route_one, requests)
    plain = _timed(route, views, _plain, requests)
    return with_prefix - plain


def report() -> str:
    rows = [f"| {size // 1024} KB | {cost_us(size):.1f} |" for size in SIZES]
    return "\n".join(
        [
            "## prefix: CPU the cache-aware routing index adds per request (in-process)",
            "",
            f"Chat bodies, {WORKERS} workers, {SETTINGS.block_bytes}-byte blocks, a warm index: "
            "canonical prompt + block hashes + match + record, minus the plain worker choice. "
            "Budget: 20 µs at 4 KB.",
            "",
            "| prompt | µs per request |",
            "|---|---|",
            *rows,
            "",
        ]
    )


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
