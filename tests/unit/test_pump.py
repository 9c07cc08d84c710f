"""StreamPump (gateway/relay/pump.py), the relay of a stream after its first event inside the
worker connection's read callback: what it writes, what it leaves out, and what it tells the
waiting task (the end, a failure, the client gone or behind)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import UpstreamInvalid
from gateway.record import Timing
from gateway.relay.deadline import MovingDeadline
from gateway.relay.disconnect import ClientGone
from gateway.relay.pump import StreamPump
from gateway.relay.sse import SSEFramer
from gateway.relay.usage import UsageTap

CHUNK = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'


class Client:
    """A client connection: what was written, whether it is gone or behind."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.gone = False
        self.behind = False

    def write_chunk(self, data: bytes) -> bool:
        if self.gone:
            return False
        self.written.append(data)
        return True

    def write_paused(self) -> bool:
        return self.behind


class Worker:
    """The worker's answer: whether reading from it is paused."""

    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def pump(client: Client, worker: Worker, tap: UsageTap | None = None) -> tuple[StreamPump, Timing]:
    timing = Timing(started=0.0)
    deadline = MovingDeadline(0.0)
    made = StreamPump(worker, client, SSEFramer(), tap, timing, deadline, 5.0, 1e9)  # type: ignore[arg-type]
    return made, timing


async def test_events_go_out_as_they_come_and_the_unasked_usage_chunk_does_not() -> None:
    client, worker = Client(), Worker()
    tap = UsageTap(strip=True)
    relay, timing = pump(client, worker, tap)
    relay.chunk(CHUNK[:20])  # half an event: nothing yet
    relay.chunk(CHUNK[20:] + CHUNK)
    relay.chunk(USAGE + b"data: [DONE]\n\n")
    relay.ended(None)
    await asyncio.wait_for(relay.wait(), 1.0)
    relay.result()
    assert client.written == [CHUNK + CHUNK, b"data: [DONE]\n\n"]
    assert timing.events == 2
    assert tap.usage is not None
    assert tap.usage.completion == 2


async def test_a_client_gone_or_a_worker_breaking_the_protocol_ends_it_with_that() -> None:
    client, worker = Client(), Worker()
    relay, _ = pump(client, worker)
    client.gone = True
    relay.chunk(CHUNK)
    relay.chunk(CHUNK)  # after the end: ignored
    await asyncio.wait_for(relay.wait(), 1.0)
    with pytest.raises(ClientGone):
        relay.result()
    relay, _ = pump(Client(), worker)
    relay.chunk(b"\x00\x01 not an event\n\n")
    with pytest.raises(UpstreamInvalid):
        relay.result()


async def test_a_client_behind_pauses_the_worker_until_the_task_resumes_it() -> None:
    client, worker = Client(), Worker()
    relay, _ = pump(client, worker)
    client.behind = True
    relay.chunk(CHUNK)
    assert relay.paused
    assert not worker.reading
    await asyncio.wait_for(relay.wait(), 1.0)  # returns at once: there is draining to do
    client.behind = False
    relay.resume()
    assert worker.reading
    assert not relay.finished


async def test_a_detached_pump_writes_nothing_more() -> None:
    client, worker = Client(), Worker()
    relay, _ = pump(client, worker)
    relay.chunk(CHUNK)
    relay.detach()  # e.g. a stalled stream's error event is about to go out
    relay.chunk(CHUNK)
    assert client.written == [CHUNK]
    assert relay.finished
    relay.result()  # detaching is not a failure of its own
