"""The per-request record: created by the outer middleware, filled by the route and the relay,
read (never written) by metrics, tracing and the access log once the request has ended.

A leaf module: observers depend on this record, not on the parts that fill it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, get_args

from gateway.request import RequestView

# Why a worker was chosen: only (one worker), load (least loaded), session (affinity), cache
# (the prefix index's best match), fallback (a cache match overruled by load), length, retry.
RouteReason = Literal["only", "load", "session", "cache", "fallback", "length", "retry"]
ROUTE_REASONS: tuple[RouteReason, ...] = get_args(RouteReason)


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one answer, as the worker reported them."""

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(slots=True)
class Timing:
    """Where the request's time went (perf_counter seconds)."""

    started: float
    queued: float = 0.0  # waiting in the admission queue
    upstream: float = 0.0  # waiting on the worker: connect + answer, or every read of a stream
    first_event: float | None = None  # when a stream's first event went to the client
    last_event: float = 0.0
    events: int = 0  # stream writes to the client


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    endpoint: str  # a known path or "other": a bounded metrics label
    timing: Timing
    key: str | None = None  # the key's name from the keys file, never the key
    view: RequestView | None = None  # once the body parsed
    model: str | None = None  # a configured model name, once the request was let through
    # Headers that carry the request's trace to the worker (traceparent), when tracing is on.
    trace_headers: list[tuple[str, str]] = field(default_factory=list)
    relayed: bool = False  # it reached the relay (queue, worker, answer)
    worker: str | None = None  # the worker that answered (the last one tried)
    route: RouteReason | None = None  # why that worker
    prompt_blocks: int = 0  # the prompt's blocks, when cache-aware routing hashed it
    cached_blocks: int = 0  # of those, how many the prefix index expected the worker to hold
    retries: int = 0  # times it was sent again to another worker
    usage: Usage | None = None
    status: int = 0  # of the answer the client got; 0 until one started
    error_code: str | None = None  # when it was an error, even one sent mid-stream
    upstream_violation: str | None = None  # how the worker broke the protocol, if it did
    client_gone: bool = False  # the client left before the answer was finished
    duration: float = 0.0  # seconds, set by finish()

    @classmethod
    def start(cls, request_id: str, method: str, endpoint: str) -> RequestRecord:
        return cls(request_id, method, endpoint, Timing(time.perf_counter()))

    def finish(self) -> None:
        """Decide the final status, once: 499 when the client left first, else what was sent
        (500 when nothing was)."""
        self.duration = time.perf_counter() - self.timing.started
        self.status = 499 if self.client_gone else self.status or 500

    def tokens_used(self) -> int | None:
        """What the request used: the worker's report; nothing when it never reached a
        worker (refused by our own queue); None (unknown) when the report is missing."""
        if self.usage is not None:
            return self.usage.total
        return 0 if self.worker is None else None
