"""Which requests may go to their worker before Redis has admitted them.

The admit is a Redis round trip, plus its script's run, on every limited request's path. For a
key far from all of its limits the answer is all but certain, so the gateway sends the request
to its worker while the admit is in flight and waits for the answer only before the client's
answer starts: Redis's latency then hides behind the worker's (a first token takes tens of ms on
a GPU, the admit well under one). The decision stays Redis's: a refusal still refuses (429) and
cuts the worker's request off, so limits stay exact; only a request that other replicas' traffic
pushed over a limit within the window costs its worker a moment's work.

"Far" is judged from the key's last decision in this process, at most `window` seconds old,
less what this process has sent early since without an answer yet: every limit of the key at
most half used, this request included. The key's other requests in this process wait for those
early admits to be decided before their own goes to Redis (`early_out`): Redis must decide the
early ones first, against the headroom they were judged by, not after requests that came later.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from gateway.config.keys import Principal
from gateway.limits.buckets import Decision


@dataclass(slots=True)
class _Seen:
    """A key's last decision, and what was sent early since."""

    at: float  # time.monotonic() of the decision
    decision: Decision
    requests_out: int = 0  # sent early, not yet decided
    tokens_out: int = 0
    decided: asyncio.Future[None] | None = None  # set once none is out any more


class Headroom:
    def __init__(self, window: float) -> None:
        self._window = window
        self._seen: dict[str, _Seen] = {}

    def saw(self, name: str, decision: Decision) -> None:
        """Redis decided a request of key `name` (admitted or refused)."""
        seen = self._seen.get(name)
        if seen is None:
            self._seen[name] = _Seen(time.monotonic(), decision)
        else:
            seen.at, seen.decision = time.monotonic(), decision

    def take(self, principal: Principal, cost: int) -> bool:
        """True: the request may be sent before its admit's answer (then call `done` once that
        answer is in, whatever it is)."""
        seen = self._seen.get(principal.name)
        if seen is None or time.monotonic() - seen.at > self._window:
            return False
        last = seen.decision
        requests = seen.requests_out + 1
        tokens = seen.tokens_out + cost
        rpm, tpm, concurrency = principal.rpm, principal.tpm, principal.max_concurrent
        day, month = principal.tokens_per_day, principal.tokens_per_month
        far = (
            (not rpm or last.requests_left - requests >= rpm / 2)
            and (not tpm or last.tokens_left - tokens >= tpm / 2)
            and (not concurrency or last.leases_held + requests <= concurrency / 2)
            and (not day or last.day_charged + tokens <= day / 2)
            and (not month or last.month_charged + tokens <= month / 2)
        )
        if far:
            seen.requests_out, seen.tokens_out = requests, tokens
            if seen.decided is None:
                seen.decided = asyncio.get_running_loop().create_future()
        return far

    def early_out(self, name: str) -> asyncio.Future[None] | None:
        """Done once the admits that went early for key `name` are decided (None: none is out)."""
        seen = self._seen.get(name)
        return seen.decided if seen is not None else None

    def done(self, principal: Principal, cost: int) -> None:
        """The admit of a request sent early has its answer."""
        seen = self._seen.get(principal.name)
        if seen is not None:
            seen.requests_out = max(0, seen.requests_out - 1)
            seen.tokens_out = max(0, seen.tokens_out - cost)
            if not seen.requests_out and seen.decided is not None:
                seen.decided.set_result(None)
                seen.decided = None

    def forget(self) -> None:
        """Redis is in trouble: nothing goes early until fresh decisions come in (what went
        early is still counted until its answer)."""
        for seen in self._seen.values():
            seen.at = -math.inf
