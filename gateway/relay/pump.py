"""A stream after its first event, relayed inside the worker connection's read callback: each
read's bytes are framed, tapped for usage and written to the client right there, with no task
wake-up and no coroutine chain per chunk (the shape of bench/raw_floor.py). The relaying task
only waits: for the end, a failure, the client leaving, or the client falling behind (then it
drains the client within the write deadline while reading from the worker is paused).
"""

from __future__ import annotations

import asyncio
import time

from gateway.errors import GatewayError
from gateway.record import Timing
from gateway.relay.client import ClientLink
from gateway.relay.deadline import MovingDeadline
from gateway.relay.disconnect import ClientGone
from gateway.relay.sse import SSEFramer
from gateway.relay.upstream import UpstreamResponse
from gateway.relay.usage import NamedUsageTap, UsageTap


class StreamPump:
    """`chunk` and `ended` are the worker answer's push callbacks; `await wait()` returns when
    the task has something to do: `paused` (drain the client, then `resume()`) or the end
    (`result()` raises the failure, if any)."""

    __slots__ = (
        "_deadline",
        "_framer",
        "_idle",
        "_link",
        "_loop",
        "_outcome",
        "_response",
        "_tap",
        "_timing",
        "_total",
        "_waiter",
        "busy",
        "ended_at",
        "paused",
    )

    def __init__(  # noqa: PLR0917 (the one call site names them)
        self,
        response: UpstreamResponse,
        link: ClientLink,
        framer: SSEFramer,
        tap: UsageTap | NamedUsageTap | None,
        timing: Timing,
        deadline: MovingDeadline,
        idle: float,
        total_deadline: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._response = response
        self._link = link
        self._framer = framer
        self._tap = tap
        self._timing = timing
        self._deadline = deadline
        self._idle = idle
        self._total = total_deadline
        self._waiter: asyncio.Future[None] | None = None
        # None while running; then the failure to raise, or the end (`_END`).
        self._outcome: BaseException | object | None = None
        self.paused = False
        self.busy = 0.0  # seconds spent in `chunk`: the gateway's own, not the worker's
        self.ended_at = 0.0

    # --- the worker connection's callbacks ----------------------------------------------------

    def chunk(self, data: bytes) -> None:
        if self._outcome is not None:
            return
        started = time.perf_counter()
        try:
            self._relay(data, started)
        except Exception as exc:  # noqa: BLE001 (GatewayError, ClientGone or a bug: raised
            self._finish(exc)  # in the task by result(), never into the worker connection)
        self.busy += time.perf_counter() - started

    def _relay(self, data: bytes, now: float) -> None:
        deadline = self._deadline
        deadline.at = min(self._loop.time() + self._idle, self._total)
        events = self._framer.feed(data)
        if not events:
            return
        tap = self._tap
        if tap is not None:
            events = tap.feed(events)
        if not events:
            return  # the usage chunk, which the client did not ask for
        link = self._link
        if not link.write_chunk(events):
            raise ClientGone
        timing = self._timing
        timing.last_event = now
        timing.events += 1
        if link.write_paused():
            self.paused = True
            self._response.pause_reading()
            self._wake()

    def ended(self, failure: GatewayError | None) -> None:
        self._finish(_END if failure is None else failure)

    # --- the relaying task --------------------------------------------------------------------

    async def wait(self) -> None:
        if self._outcome is None and not self.paused:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def resume(self) -> None:
        self.paused = False
        self._response.resume_reading()

    def detach(self) -> None:
        """The task stops relaying (a deadline, the client gone, a shutdown): whatever the
        worker still sends is not written to the client any more."""
        if self._outcome is None:
            self._outcome = _DETACHED

    @property
    def finished(self) -> bool:
        return self._outcome is not None

    def result(self) -> None:
        """Raise the failure that ended the stream (GatewayError, ClientGone), if any."""
        outcome = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome

    def _finish(self, outcome: BaseException | object) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self.ended_at = time.perf_counter()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_END = object()
_DETACHED = object()
