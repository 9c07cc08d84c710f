"""A deadline that moves later for almost nothing: a stream's idle timeout moves on every chunk.

asyncio.timeout's reschedule() cancels and re-creates a timer each time; here moving the
deadline is one float store, and the single timer re-arms itself when it fires early.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class MovingDeadline:
    """`async with MovingDeadline(at) as d:` raises TimeoutError once the loop time passes
    `d.at`; set `d.at` to move it (later is cheap; earlier takes effect at the next firing, or
    at once with `rearm()`)."""

    __slots__ = ("_cancelling", "_expired", "_handle", "_loop", "_task", "at")

    def __init__(self, at: float) -> None:
        self.at = at
        self._expired = False

    async def __aenter__(self) -> MovingDeadline:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._loop.call_at(self.at, self._fire)
        return self

    def rearm(self) -> None:
        """Make an earlier `at` take effect now (e.g. a stream's idle deadline, shorter than its
        first-byte one); moving it later needs no call."""
        handle = self._handle
        if handle.when() > self.at:
            handle.cancel()
            self._handle = self._loop.call_at(self.at, self._fire)

    def _fire(self) -> None:
        if self._loop.time() < self.at:  # moved later since this timer was set
            self._handle = self._loop.call_at(self.at, self._fire)
            return
        self._expired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._handle.cancel()
        # Ours only if no one else (e.g. the client-disconnect watcher) cancelled the task too.
        if (
            self._expired
            and exc_type is asyncio.CancelledError
            and self._task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc
