"""Send concurrent Lua script calls to Redis together, in one batch.

One batch in flight at a time, over one link (gateway/limits/resp.py; redis-py's pipeline for
the URL schemes it does not speak). Calls made while a batch is in flight wait for the next
one, so under load one round trip serves many requests; a lone call goes out at once.

Deferred calls (settles, which nobody waits for) go out at the head of the next call's batch,
or on their own when `kick()` says they are due: they never cost a round trip of their own on a
request's path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from gateway.limits.resp import Command

log = logging.getLogger("gateway.limits.batch")

_Call = tuple[AsyncScript, Sequence[str], Sequence[Any], "asyncio.Future[Any] | None"]
Deferred = tuple[AsyncScript, Sequence[str], Sequence[Any]]


class Link(Protocol):
    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """The replies in order, an error reply as its exception in its place."""
        ...


class PipelineLink:
    """redis-py's pipeline as a Link (for Redis URLs the limiter's own link does not speak)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))


class ScriptBatcher:
    def __init__(
        self,
        link: Link,
        take_deferred: Callable[[], list[Deferred]] | None = None,
        has_deferred: Callable[[], bool] | None = None,
    ) -> None:
        self._link = link
        self._queue: list[_Call] = []
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None  # kept: the loop holds tasks weakly
        self._take_deferred = take_deferred or list
        self._has_deferred = has_deferred or (lambda: False)

    async def call(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if not self._draining:
            # Nothing in flight: send this call at once (with the deferred calls waiting, in one
            # batch); calls made meanwhile queue up and go out together afterwards.
            self._draining = True
            try:
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                await self._send([(script, keys, args, future)])
                return await future
            finally:
                if self._queue or self._has_deferred():
                    self._start_draining()
                else:
                    self._draining = False
        future = asyncio.get_running_loop().create_future()
        self._queue.append((script, keys, args, future))
        return await future

    def busy(self) -> bool:
        """A batch is in flight: a call now waits for it before its own goes out."""
        return self._draining

    def kick(self) -> None:
        """Deferred calls are due: send them now, or with whatever is in flight's successor."""
        if not self._draining and self._has_deferred():
            self._draining = True
            self._start_draining()

    async def flush(self) -> None:
        """Send every deferred call now and wait for it."""
        if self._drainer is not None and not self._drainer.done():
            await asyncio.wait([self._drainer], timeout=1.0)
        if not self._draining and self._has_deferred():
            self._draining = True
            try:
                await self._drain()
            finally:
                self._draining = False

    def _start_draining(self) -> None:
        # A task of its own: a caller cancelled mid-flight (client gone) must not cut the
        # pipeline that others are waiting on.
        self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue or self._has_deferred():
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._draining = False

    async def _send(self, batch: list[_Call]) -> None:
        calls: list[_Call] = [(*call, None) for call in self._take_deferred()] + batch
        commands = [
            ("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in calls
        ]
        try:
            results = await self._link.execute(commands)
        except BaseException as exc:
            for *_, future in calls:
                if future is None or future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:  # cancelled (its caller left, or shutdown): nobody will read an error
                    future.cancel()
            if not isinstance(exc, Exception):
                raise
            if len(calls) > len(batch):  # the limiter counts and reports the outage itself
                log.debug("deferred limit settles lost: %s", type(exc).__name__)
            return
        for call, result in zip(calls, results, strict=True):
            await self._deliver(call, result)

    @staticmethod
    async def _deliver(call: _Call, result: Any) -> None:
        script, keys, args, future = call
        outcome = result
        if isinstance(result, NoScriptError):  # Redis restarted: Script loads it again
            try:
                outcome = await script(keys=list(keys), args=list(args))
            except Exception as exc:  # noqa: BLE001 - handed to the waiter
                outcome = exc
        if future is None:
            if isinstance(outcome, Exception):
                log.debug("a deferred limit settle failed: %s", outcome)
        elif future.done():
            pass  # its caller was cancelled
        elif isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    async def aclose(self) -> None:
        """Let a pipeline in flight finish (its callers are waiting on it)."""
        if self._drainer is not None and not self._drainer.done():
            await asyncio.wait([self._drainer], timeout=1.0)
