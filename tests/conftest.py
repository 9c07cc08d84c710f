"""Shared fixtures. Real processes on real sockets (tests/procs.py); Redis DBs handed out by
tests/redis_dbs.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_dbs import RedisDBs


@pytest.fixture(scope="session")
def redis_dbs() -> RedisDBs:
    return RedisDBs()


@pytest.fixture
def redis_url(redis_dbs: RedisDBs) -> Iterator[str]:
    """A flushed Redis DB of this test's own."""
    with redis_dbs.take() as url:
        yield url


@pytest.fixture(scope="module")
def module_redis_url(redis_dbs: RedisDBs) -> Iterator[str]:
    """A flushed Redis DB shared by one test module."""
    with redis_dbs.take() as url:
        yield url
