"""The shutdown drain: from its start /ready answers 503 and no new connection is accepted; the
requests in flight may finish until its deadline, when each one still relaying is interrupted:
a stream ends with an SSE error event and `[DONE]`, an answer not begun is a 503 envelope."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("gateway.server")


class Interruptible(Protocol):
    def interrupt(self) -> None:
        """End the request now, telling its client the gateway is shutting down."""
        ...


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._active: set[Interruptible] = set()
        self._timer: asyncio.TimerHandle | None = None

    def track(self, request: Interruptible) -> None:
        self._active.add(request)

    def untrack(self, request: Interruptible) -> None:
        self._active.discard(request)

    def begin(self, seconds: float) -> None:
        """Start draining; interrupt what is still running after `seconds`."""
        if self.draining:
            return
        self.draining = True
        log.warning(
            "draining: %d request(s) in flight may finish within %gs", len(self._active), seconds
        )
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        if self._active:
            log.warning("drain deadline: ending %d request(s) still running", len(self._active))
        for request in list(self._active):
            request.interrupt()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
