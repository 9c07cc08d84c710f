"""MovingDeadline: fires at the current deadline, however often it was moved."""

from __future__ import annotations

import asyncio

import pytest

from gateway.relay.deadline import MovingDeadline


async def test_fires_once_the_deadline_passes() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with MovingDeadline(loop.time() + 0.05):
            await asyncio.sleep(1)


async def test_moving_it_later_keeps_the_work_alive() -> None:
    loop = asyncio.get_running_loop()
    async with MovingDeadline(loop.time() + 0.05) as deadline:
        for _ in range(10):
            await asyncio.sleep(0.02)
            deadline.at = loop.time() + 0.05  # each step well within the moving deadline


async def test_fires_after_the_last_move() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with MovingDeadline(started + 0.05) as deadline:
            deadline.at = started + 0.2
            await asyncio.sleep(1)
    assert loop.time() - started >= 0.2


async def test_an_earlier_deadline_takes_effect_at_once_when_rearmed() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with MovingDeadline(started + 5) as deadline:
            deadline.at = started + 0.05
            deadline.rearm()
            await asyncio.sleep(1)
    assert loop.time() - started < 1


async def test_someone_elses_cancel_is_not_a_timeout() -> None:
    async def work() -> None:
        async with MovingDeadline(asyncio.get_running_loop().time() + 10):
            await asyncio.sleep(1)

    task = asyncio.create_task(work())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
