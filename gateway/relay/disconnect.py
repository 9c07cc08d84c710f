"""Watching the client while its answer is relayed: when it disconnects first, the relaying task
is cancelled, which closes the upstream request, so vLLM aborts the generation.

The server layer calls back when the connection closes (ClientLink.on_lost): no task per
request. Without that link (another ASGI server), a task waits for ASGI's http.disconnect."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

from starlette.types import Receive

if TYPE_CHECKING:
    from gateway.relay.client import ClientLink


class ClientGone(Exception):
    """Sending to the client failed: it closed its connection."""


class DisconnectWatch:
    """`async with DisconnectWatch(receive, link) as watch:` around the relaying; afterwards
    `gone` says whether the client left before `finished` was set (its answer's last byte was
    sent). Leaving is not an error: the block's cancellation or ClientGone ends quietly."""

    __slots__ = ("_link", "_receive", "_task", "_watcher", "finished", "gone")

    def __init__(self, receive: Receive, link: ClientLink | None) -> None:
        self._receive = receive
        self._link = link
        self._watcher: asyncio.Task[None] | None = None
        self.finished = False
        self.gone = False

    async def __aenter__(self) -> DisconnectWatch:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        if self._link is not None:
            self._link.on_lost(self._lost)
        else:
            self._watcher = asyncio.create_task(self._watch())
        return self

    def _lost(self) -> None:
        if not self.finished:
            self.gone = True
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                if not self.finished:
                    self.gone = True
                    self._task.cancel()
                return

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._link is not None:
            self._link.on_lost(None)
        elif self._watcher is not None:
            self._watcher.cancel()
        if exc_type is ClientGone:
            self.gone = True
            return True
        if exc_type is asyncio.CancelledError and self.gone:
            self._task.uncancel()  # our own cancellation, not the server's
            return True
        return False
