"""Callers for limit tests: each a name of its own, so no test sees another's buckets."""

from __future__ import annotations

import uuid

from gateway.config.keys import Principal


def key(
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
    *,
    tokens_per_day: int | None = None,
    tokens_per_month: int | None = None,
) -> Principal:
    return Principal(
        name=f"k-{uuid.uuid4().hex[:12]}",
        models=None,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        tokens_per_day=tokens_per_day,
        tokens_per_month=tokens_per_month,
    )


def lease() -> str:
    return uuid.uuid4().hex
