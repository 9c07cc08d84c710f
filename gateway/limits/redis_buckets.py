"""The limit rules in Redis (admit.lua, settle.lua): one atomic script per decision, with Redis's
own clock, so any number of gateway replicas together admit exactly what one would.

One round trip per request: a finished request's settle does not go out on its own at once; it
waits (up to `settle_delay` seconds) for the next admit, and rides in it: inside the admit's
script when it is the same key's (settle.lua's function runs first in admit.lua), in the same
pipeline otherwise. With no admit coming, it goes out after `settle_delay`, batched with the
other settles of that moment. So a replica frees a lease or gives back unused tokens up to
`settle_delay` later than it could: limits stay exact, only slightly stricter.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config.keys import Principal
from gateway.limits.batch import Deferred, PipelineLink, ScriptBatcher
from gateway.limits.buckets import Counters, Decision, Spent
from gateway.limits.budget import KEEP_DAY, KEEP_MONTH, Periods, periods
from gateway.limits.resp import RespLink, supports

_SCRIPTS = Path(__file__).parent
_RUN_ALONE = "-- run alone\n"


@dataclass(slots=True)
class _Pending:
    """Settles of one key (and one pair of periods) waiting to go, merged."""

    principal: Principal
    when: Periods
    delta: int = 0
    charge: int = 0
    leases: list[str] = field(default_factory=list)
    models: dict[str, list[int]] = field(default_factory=dict)  # model -> requests, p, c

    def args(self) -> list[Any]:
        usage: list[Any] = []
        for model, (n, prompt, completion) in self.models.items():
            usage += [model, n, prompt, completion]
        return [self.principal.tpm or 0, self.delta, self.charge, " ".join(self.leases), *usage]


def _ttls(when: Periods) -> tuple[int, int]:
    now = time.time()
    return int(when.day_reset - now) + KEEP_DAY, int(when.month_reset - now) + KEEP_MONTH


class RedisBuckets:
    """admit.lua and settle.lua with tight timeouts: on the request path through the limiter's
    own link (resp.py), reads of usage through redis-py."""

    def __init__(
        self, url: str, timeout: float, lease_ttl: float, settle_delay: float = 0.005
    ) -> None:
        # One immediate retry on a connection error: after a Redis restart every pooled
        # connection fails its first command although Redis is up. Timeouts are not retried.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            retry_on_error=[RedisConnectionError],
            health_check_interval=0,
        )
        self._lease_ttl = lease_ttl
        self._settle_delay = settle_delay
        settle = (_SCRIPTS / "settle.lua").read_text()
        self._settle = self._redis.register_script(settle)
        shared = settle.split(_RUN_ALONE)[0]  # the settle function, without its own run
        self._admit = self._redis.register_script(shared + (_SCRIPTS / "admit.lua").read_text())
        self._pending: dict[tuple[str, str, str], _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._link = RespLink(url, timeout) if supports(url) else None
        link = self._link or PipelineLink(self._redis)
        self._batch = ScriptBatcher(link, self._take_pending, lambda: bool(self._pending))

    @staticmethod
    def _keys(name: str, when: Periods) -> list[str]:
        tag = "{" + name + "}"  # one hash tag: one cluster slot for all of a key's state
        return [
            f"gw:{tag}:rpm",
            f"gw:{tag}:tpm",
            f"gw:{tag}:leases",
            f"gw:{tag}:d:{when.day}",
            f"gw:{tag}:m:{when.month}",
        ]

    async def decide(
        self, principal: Principal, cost: int, lease: str, when: Periods | None = None
    ) -> Decision:
        when = when or periods()
        day_ttl, month_ttl = _ttls(when)
        args: list[Any] = [
            principal.rpm or 0,
            principal.tpm or 0,
            principal.max_concurrent or 0,
            principal.tokens_per_day or 0,
            principal.tokens_per_month or 0,
            cost,
            lease,
            self._lease_ttl,
            day_ttl,
            month_ttl,
        ]
        riding = self._pending.pop((principal.name, when.day, when.month), None)
        args += ["1", *riding.args()] if riding is not None else ["0"]
        reply = await self._batch.call(self._admit, self._keys(principal.name, when), args)
        admitted, refused, wait, requests, tokens, held, day, month = (
            v.decode() if isinstance(v, bytes) else str(v) for v in reply
        )
        return Decision(
            admitted == "1",
            refused,
            float(wait),
            float(requests),
            float(tokens),
            float(day),
            float(month),
            float(held),
        )

    async def settle(
        self,
        principal: Principal,
        delta: int,
        lease: str,
        spent: Spent | None = None,
        when: Periods | None = None,
    ) -> None:
        """Queue the settle: it goes with the next admit, or after `settle_delay`."""
        when = when or periods()
        slot = (principal.name, when.day, when.month)
        pending = self._pending.get(slot)
        if pending is None:
            pending = self._pending[slot] = _Pending(principal, when)
        pending.principal = principal
        if principal.tpm:
            pending.delta += delta
        if principal.budgeted:
            pending.charge += delta
        if lease and principal.max_concurrent:
            pending.leases.append(lease)
        if spent is not None:
            counts = pending.models.setdefault(spent.model, [0, 0, 0])
            counts[0] += 1
            counts[1] += spent.prompt
            counts[2] += spent.completion
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._settle_delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self._batch.kick()

    def _take_pending(self) -> list[Deferred]:
        calls: list[Deferred] = []
        for pending in self._pending.values():
            keys = self._keys(pending.principal.name, pending.when)
            day_ttl, month_ttl = _ttls(pending.when)
            args = pending.args()
            calls.append((self._settle, keys[1:], [*args[:4], day_ttl, month_ttl, *args[4:]]))
        self._pending.clear()
        return calls

    def batching(self) -> bool:
        return self._batch.busy()

    async def usage(self, name: str, when: Periods) -> tuple[Counters, Counters]:
        await self.flush()  # this replica's settles still waiting to go count too
        keys = self._keys(name, when)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys[3])
        pipe.hgetall(keys[4])
        day, month = await pipe.execute()
        return _counters(day), _counters(month)

    async def flush(self) -> None:
        """Send the settles waiting to go now (shutdown, tests)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._batch.flush()

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # Redis gone at shutdown: leases expire anyway
            await self.flush()
        await self._batch.aclose()
        if self._link is not None:
            await self._link.aclose()
        await self._redis.aclose()


def _counters(raw: dict[bytes, bytes]) -> Counters:
    return {k.decode(): int(v) for k, v in raw.items()}
