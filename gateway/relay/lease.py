"""The worker a request holds while it is relayed: a slot taken from its model's admission queue,
swapped to another worker when a retry needs one, and given back with the worker's outcome."""

from __future__ import annotations

import logging
import time
from typing import Protocol

from gateway.errors import GatewayError
from gateway.record import RequestRecord
from gateway.routing.admission import DEFAULT_PRIORITY, ModelQueue
from gateway.routing.policy import Choice, Preference
from gateway.routing.registry import Worker

log = logging.getLogger("gateway.relay")


class Outcomes(Protocol):
    """Where a worker's successes and failures count (routing.health.Health)."""

    def succeeded(self, worker: Worker) -> None: ...

    def failed(self, worker: Worker, kind: str) -> None: ...


class WorkerLease:
    def __init__(
        self,
        queue: ModelQueue,
        outcomes: Outcomes,
        record: RequestRecord,
        *,
        key: str,
        prefer: Preference | None,
        priority: int = DEFAULT_PRIORITY,
    ) -> None:
        self._queue = queue
        self._outcomes = outcomes
        self._record = record
        self._key = key
        self._prefer = prefer
        self._priority = priority
        self._tried: set[Worker] = set()
        self.worker: Worker | None = None

    async def acquire(self) -> Worker:
        """A worker of the model, maybe after waiting in its queue (GatewayError: refused)."""
        started = time.perf_counter()
        choice = await self._queue.acquire(self._key, self._prefer, self._priority)
        self._record.timing.queued = time.perf_counter() - started
        self._take(choice)
        return choice.worker

    def switch(self, failed: Worker, error: GatewayError) -> Worker | None:
        """Retry hook (Upstream.open_retrying): another worker, the failure counted against
        `failed`. None: there is no other; the error then ends the request and counts there."""
        choice = self._queue.take_another(frozenset(self._tried), self._prefer)
        if choice is None:
            return None
        self._outcomes.failed(failed, error.worker_fault or "failed")
        self._queue.release(failed)
        self._take(choice)
        replacement = choice.worker
        self._record.retries += 1
        log.info(
            "request %s: %s from %s, trying %s",
            self._record.request_id,
            error.code,
            failed.name,
            replacement.name,
        )
        return replacement

    def release(self, *, answered: bool, fault: str | None) -> None:
        """Give the slot back; `answered` False (the client left) says nothing of the worker."""
        worker = self.worker
        if worker is None:
            return
        if answered:
            if fault:
                self._outcomes.failed(worker, fault)
            else:
                self._outcomes.succeeded(worker)
        self._queue.release(worker)

    def _take(self, choice: Choice) -> None:
        worker = choice.worker
        self._tried.add(worker)
        self.worker = worker
        record = self._record
        record.worker = worker.name
        record.route = choice.reason
        record.cached_blocks = choice.cached_blocks
