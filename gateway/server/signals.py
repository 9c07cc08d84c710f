"""The signals a service manager sends, taken over in each gateway process once it serves:
SIGTERM / SIGINT start the drain at once (/ready turns 503) and then let uvicorn shut down, which
waits for the drain; the process exits 0 rather than by the signal. SIGHUP calls the reload
(models file and keys file) instead of ending the process."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

Handler = Callable[[int, FrameType | None], Any]


def take_over(
    loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None], on_hup: Callable[[], None]
) -> None:
    """Call from the event loop's thread (the main one) after the server installed its own."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_handler(loop, on_exit, signal.getsignal(sig)))
    loop.add_signal_handler(signal.SIGHUP, on_hup)


def _exit_handler(
    loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None], previous: Any
) -> Handler:
    server = getattr(previous, "__self__", None)

    def handle(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(on_exit)
        if isinstance(server, uvicorn.Server):
            # What uvicorn's own handler does, minus noting the signal to raise it again once
            # shut down: after a drain the process exits 0. A second Ctrl-C forces the exit.
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True
        elif callable(previous):
            previous(signum, frame)

    return handle
