"""The admission queue: exact bound, fair release across keys, push-out instead of starvation,
wait timeout, clients leaving, no healthy worker, and slots never leaked."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import NoHealthyBackend, ServerOverloaded
from gateway.observe.metrics import Metrics
from gateway.routing.admission import ModelQueue, QueueSettings
from gateway.routing.registry import ModelRoute, Worker


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def make_queue(cap: int = 1, depth: int = 4, timeout: float = 5.0, workers: int = 1) -> ModelQueue:
    route = ModelRoute(
        "m",
        tuple(Worker(f"w{i}", "m", f"http://w{i}") for i in range(workers)),
        max_inflight_per_worker=cap,
    )
    return ModelQueue(route, QueueSettings(depth, timeout, stale_after=3.0), Metrics())


async def take(queue: ModelQueue, key: str) -> Worker:
    """A worker with a slot taken, as a request without preferences gets it."""
    return (await queue.acquire(key, None)).worker


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_free_worker_is_taken_at_once_and_given_back() -> None:
    queue = make_queue(cap=2)
    first = await take(queue, "k")
    second = await take(queue, "k")
    assert first is second
    assert first.inflight == 2
    queue.release(first)
    queue.release(second)
    assert first.inflight == 0
    assert queue.size == 0


async def test_bound_is_exact_and_overflow_is_refused_at_once() -> None:
    queue = make_queue(cap=1, depth=3)
    busy = await take(queue, "k")
    waiting = [asyncio.create_task(take(queue, "k")) for _ in range(3)]
    await settle()
    assert queue.size == 3
    with pytest.raises(ServerOverloaded) as refused:
        await take(queue, "k")  # no await on a worker: refused on the spot
    assert refused.value.headers["retry-after"].isdigit()
    assert refused.value.code == "server_overloaded"
    for task in waiting:  # each release hands the worker to the next in line
        queue.release(busy)
        busy = await task
    queue.release(busy)
    assert queue.size == 0
    assert busy.inflight == 0


async def test_release_is_round_robin_across_keys() -> None:
    queue = make_queue(cap=1, depth=10)
    busy = await take(queue, "flood")
    order: list[str] = []

    async def request(key: str) -> None:
        worker = await take(queue, key)
        order.append(key)
        await asyncio.sleep(0)
        queue.release(worker)

    tasks = [asyncio.create_task(request("flood")) for _ in range(6)]
    await settle()
    tasks += [asyncio.create_task(request("other")) for _ in range(2)]
    await settle()
    queue.release(busy)
    await asyncio.gather(*tasks)
    # "other" came after six flood requests, yet waits for at most one of them each time.
    assert order[:4] == ["flood", "other", "flood", "other"]


async def test_full_queue_pushes_out_the_biggest_key_instead_of_refusing_a_small_one() -> None:
    queue = make_queue(cap=1, depth=4)
    busy = await take(queue, "flood")
    flood = [asyncio.create_task(take(queue, "flood")) for _ in range(4)]
    await settle()
    other = asyncio.create_task(take(queue, "other"))
    await settle()
    assert queue.size == 4
    pushed_out = [t for t in flood if t.done()]
    assert len(pushed_out) == 1
    assert pushed_out[0] is flood[-1]
    assert isinstance(pushed_out[0].exception(), ServerOverloaded)
    with pytest.raises(ServerOverloaded):  # the flood key gets no more places
        await take(queue, "flood")
    queue.release(busy)
    assert (await flood[0]).name == "w0"  # first in the round
    queue.release(busy)
    assert (await other).name == "w0"  # then the other key, ahead of two older flood requests
    for task in flood[1:3]:
        task.cancel()


async def test_waiting_too_long_is_a_503_and_leaves_the_queue() -> None:
    queue = make_queue(cap=1, depth=4, timeout=0.05)
    busy = await take(queue, "k")
    with pytest.raises(ServerOverloaded, match="waited"):
        await take(queue, "k")
    assert queue.size == 0
    queue.release(busy)
    assert busy.inflight == 0


async def test_client_leaving_while_queued_frees_its_place_at_once() -> None:
    queue = make_queue(cap=1, depth=2)
    busy = await take(queue, "k")
    leaving = asyncio.create_task(take(queue, "k"))
    staying = asyncio.create_task(take(queue, "k"))
    await settle()
    leaving.cancel()
    await settle()
    assert queue.size == 1
    queue.release(busy)
    assert (await staying).inflight == 1  # the slot went to the one still waiting


async def test_worker_handed_to_a_client_that_just_left_is_given_back() -> None:
    queue = make_queue(cap=1, depth=2)
    busy = await take(queue, "k")
    waiter = asyncio.create_task(take(queue, "k"))
    await settle()
    queue.release(busy)  # the waiter's future now holds the worker...
    waiter.cancel()  # ...and its client leaves before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert busy.inflight == 0
    assert queue.size == 0


async def test_no_worker_taking_traffic_is_no_healthy_backend_with_retry_after() -> None:
    queue = make_queue(cap=1, depth=2)
    worker = queue.route.workers[0]
    busy = await take(queue, "k")
    waiting = asyncio.create_task(take(queue, "k"))
    await settle()
    worker.up = False
    queue.pump()  # what the health monitor does after a round
    with pytest.raises(NoHealthyBackend):
        await waiting
    with pytest.raises(NoHealthyBackend) as refused:
        await take(queue, "k")
    assert refused.value.headers["retry-after"] == "1"
    queue.release(busy)


async def test_retry_takes_another_worker_even_when_saturated() -> None:
    queue = make_queue(cap=1, depth=2, workers=2)
    first = await take(queue, "k")
    second = await take(queue, "k")
    assert first is not second
    retry = queue.take_another(frozenset({first}))
    assert retry is not None
    assert (retry.worker, retry.reason) == (second, "retry")  # saturated, still taken
    assert queue.take_another(frozenset({first, second})) is None
    assert second.inflight == 2


async def test_depth_gauge_and_rejections_are_counted() -> None:
    metrics = Metrics()
    queue = ModelQueue(make_queue().route, QueueSettings(1, 5.0, 3.0), metrics)
    busy = await take(queue, "k")
    waiting = asyncio.create_task(take(queue, "k"))
    await settle()
    assert sample(metrics.registry, "gateway_queue_depth", model="m") == 1
    with pytest.raises(ServerOverloaded):
        await take(queue, "k")
    assert sample(metrics.registry, "gateway_queue_rejections_total", model="m", reason="full") == 1
    queue.release(busy)
    queue.release(await waiting)
    assert sample(metrics.registry, "gateway_queue_depth", model="m") == 0
    assert sample(metrics.registry, "gateway_queue_wait_seconds_count", model="m") == 1


async def test_a_worker_freed_right_as_the_head_of_the_queue_leaves_goes_to_the_next() -> None:
    queue = make_queue(cap=1, depth=2)
    busy = await take(queue, "k")
    leaving = asyncio.create_task(take(queue, "k"))
    staying = asyncio.create_task(take(queue, "k"))
    await settle()
    leaving.cancel()  # its future is cancelled now; the task only learns of it later
    queue.release(busy)  # in the same loop step: must skip it, not fail on it
    assert (await staying) is busy
    assert busy.inflight == 1
    assert queue.size == 0


async def test_retry_after_reads_only_the_recent_drain_rate() -> None:
    queue = make_queue(cap=1, depth=1)
    queue.size = 20  # as if 20 were waiting (only the count matters here)
    now = asyncio.get_running_loop().time()
    queue._released.extend([now - 3600 + i for i in range(30)])  # one a second, an hour ago
    assert queue._retry_after() == 1  # says nothing about now (not 21 s at that old rate)
    queue._released.extend([now - 1 + i / 10 for i in range(10)])  # ten a second, now
    assert queue._retry_after() == 3  # 21 / 10 a second (not 60 from the hour-long span)


# --- priority classes ---------------------------------------------------------------------------

INTERACTIVE, STANDARD, BATCH = 0, 1, 2


def make_classed_queue(depth: int = 10, aging: float = 60.0) -> ModelQueue:
    route = ModelRoute("m", (Worker("w0", "m", "http://w0"),), max_inflight_per_worker=1)
    return ModelQueue(route, QueueSettings(depth, 5.0, 3.0, aging), Metrics())


async def test_a_higher_class_is_served_first_and_round_robin_across_keys_within_it() -> None:
    queue = make_classed_queue()
    busy = (await queue.acquire("x", None)).worker
    order: list[str] = []

    async def request(key: str, level: int) -> None:
        worker = (await queue.acquire(key, None, level)).worker
        order.append(key)
        await asyncio.sleep(0)
        queue.release(worker)

    tasks = [asyncio.create_task(request("nightly", BATCH)) for _ in range(3)]
    await settle()
    tasks += [asyncio.create_task(request("etl", STANDARD)) for _ in range(2)]
    tasks += [asyncio.create_task(request("ui-a", INTERACTIVE)) for _ in range(2)]
    tasks += [asyncio.create_task(request("ui-b", INTERACTIVE)) for _ in range(2)]
    await settle()
    queue.release(busy)
    await asyncio.gather(*tasks)
    assert order == ["ui-a", "ui-b", "ui-a", "ui-b", "etl", "etl", "nightly", "nightly", "nightly"]


async def test_aging_promotes_a_waiting_lower_class_so_it_is_not_starved() -> None:
    queue = make_classed_queue(aging=0.05)
    busy = (await queue.acquire("x", None)).worker
    batch = asyncio.create_task(queue.acquire("nightly", None, BATCH))
    await settle()
    # interactive requests keep arriving; batch ties them after 2 x aging, passes after 3 x
    served: list[str] = []
    for _ in range(40):
        ui = asyncio.create_task(queue.acquire("ui", None, INTERACTIVE))
        await settle()
        queue.release(busy)
        await settle()
        if batch.done():
            served.append("nightly")
            busy = batch.result().worker
            queue.release(busy)
            await ui
            busy = ui.result().worker
            break
        busy = (await ui).worker
        served.append("ui")
        await asyncio.sleep(0.01)
    assert served[-1] == "nightly", served
    assert 10 <= served.count("ui") <= 25  # waited ~0.15 s behind ~0.01 s interactive turns
    queue.release(busy)


async def test_a_full_queue_sheds_the_newest_waiter_of_the_lowest_class_for_a_higher_one() -> None:
    queue = make_classed_queue(depth=3)
    busy = (await queue.acquire("x", None)).worker
    old_batch = asyncio.create_task(queue.acquire("nightly", None, BATCH))
    await settle()
    standard = asyncio.create_task(queue.acquire("etl", None, STANDARD))
    await settle()
    new_batch = asyncio.create_task(queue.acquire("nightly-2", None, BATCH))
    await settle()
    ui = asyncio.create_task(queue.acquire("ui", None, INTERACTIVE))
    await settle()
    assert new_batch.done()
    with pytest.raises(ServerOverloaded) as shed:
        new_batch.result()
    assert shed.value.code == "server_overloaded"
    assert not old_batch.done()
    assert not standard.done()
    assert not ui.done()
    # a batch newcomer finds no lower class to push out: refused on the spot
    with pytest.raises(ServerOverloaded):
        await queue.acquire("nightly-3", None, BATCH)
    queue.release(busy)
    busy = (await ui).worker
    queue.release(busy)
    busy = (await standard).worker
    queue.release(busy)
    busy = (await old_batch).worker
    queue.release(busy)
    assert queue.size == 0
    assert busy.inflight == 0
