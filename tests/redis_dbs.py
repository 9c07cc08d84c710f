"""The one place that hands out database numbers of the Redis on 127.0.0.1:6379 to tests.

Each holder gets a DB of its own, flushed when handed out, so no test sees another's keys.
DB 0 is left to whoever runs the gateway by hand on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

# Another Redis for the suite (e.g. two checkouts testing at once on one machine):
# GATEWAY_TEST_REDIS=redis://127.0.0.1:6380, or that URL in an untracked .test-redis file at the
# checkout's root.
_LOCAL = Path(__file__).resolve().parent.parent / ".test-redis"
REDIS = os.environ.get("GATEWAY_TEST_REDIS") or (
    _LOCAL.read_text().strip() if _LOCAL.is_file() else "redis://127.0.0.1:6379"
)


class RedisDBs:
    def __init__(self, first: int = 1, last: int = 15) -> None:
        self._free = list(range(first, last + 1))

    @contextmanager
    def take(self) -> Iterator[str]:
        """A flushed DB's URL, held until the block ends."""
        if not self._free:
            raise RuntimeError("every Redis DB is taken: give some back (narrower fixture scope)")
        db = self._free.pop(0)
        url = f"{REDIS}/{db}"
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()
        try:
            yield url
        finally:
            self._free.insert(0, db)
