"""Headroom (gateway/limits/headroom.py): which requests may go to their worker before Redis has
admitted them — only a key whose last decision, fresh, leaves every limit at most half used
with what was sent early since and this request counted."""

from __future__ import annotations

import time

import pytest

from gateway.config.keys import Principal
from gateway.limits.buckets import Decision
from gateway.limits.headroom import Headroom


def key(
    name: str = "k",
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
    tokens_per_day: int | None = None,
) -> Principal:
    return Principal(name, None, rpm, tpm, max_concurrent, tokens_per_day=tokens_per_day)


def admitted(requests: float = 0, tokens: float = 0, held: float = 0, day: float = 0) -> Decision:
    return Decision(True, "", 0.0, requests, tokens, day, 0.0, held)


async def test_nothing_goes_early_before_a_decision_or_after_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    room = Headroom(window=1.0)
    principal = key(rpm=100)
    assert not room.take(principal, 10)
    room.saw("k", admitted(requests=99))
    assert room.take(principal, 10)
    later = time.monotonic() + 1.5
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert not room.take(principal, 10)


async def test_each_limit_must_stay_at_most_half_used_counting_what_went_early() -> None:
    room = Headroom(window=60.0)
    rpm = key("r", rpm=100)
    room.saw("r", admitted(requests=53))
    assert [room.take(rpm, 0) for _ in range(4)] == [True, True, True, False]  # 49 would be left
    room.done(rpm, 0)  # one of them decided: its request is in the next decision's numbers
    assert room.take(rpm, 0)

    tokens = key("t", tpm=1000)
    room.saw("t", admitted(tokens=900))
    assert room.take(tokens, 300)  # 600 left
    assert not room.take(tokens, 200)  # 400 would be left

    concurrent = key("c", max_concurrent=10)
    room.saw("c", admitted(held=3))
    assert room.take(concurrent, 0)  # 4 of 10
    assert room.take(concurrent, 0)  # 5 of 10
    assert not room.take(concurrent, 0)

    budget = key("d", tokens_per_day=1000)
    room.saw("d", admitted(day=400))
    assert not room.take(budget, 101)
    assert room.take(budget, 100)


async def test_redis_trouble_stops_early_sends_but_keeps_counting_those_out() -> None:
    room = Headroom(window=60.0)
    rpm = key(rpm=100)
    room.saw("k", admitted(requests=60))
    assert [room.take(rpm, 0) for _ in range(5)] == [True] * 5  # 5 out, 55 would be left
    room.forget()
    assert not room.take(rpm, 0)
    room.saw("k", admitted(requests=60))  # a fresh decision: the 5 still count
    assert [room.take(rpm, 0) for _ in range(6)] == [True] * 5 + [False]
