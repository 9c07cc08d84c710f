"""Watching the client while its answer is relayed: when it disconnects first, the relaying task
is cancelled, which closes the upstream request, so vLLM aborts the generation."""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive


class ClientGone(Exception):
    """Sending to the client failed: it closed its connection."""


class DisconnectWatch:
    """`async with DisconnectWatch(receive) as watch:` around the relaying; afterwards `gone`
    says whether the client left before `finished` was set (its answer's last byte was sent).
    Leaving is not an error: the block's cancellation or ClientGone ends quietly."""

    __slots__ = ("_receive", "_task", "_watcher", "finished", "gone")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.finished = False
        self.gone = False

    async def __aenter__(self) -> DisconnectWatch:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watcher = asyncio.create_task(self._watch())
        return self

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
        self._watcher.cancel()
        if exc_type is ClientGone:
            self.gone = True
            return True
        if exc_type is asyncio.CancelledError and self.gone:
            self._task.uncancel()  # our own cancellation, not the server's
            return True
        return False
