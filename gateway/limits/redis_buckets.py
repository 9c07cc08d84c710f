"""The limit rules in Redis (admit.lua, settle.lua): one atomic script per decision, with Redis's
own clock, so any number of gateway replicas together admit exactly what one would."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config.keys import Principal
from gateway.limits.batch import ScriptBatcher
from gateway.limits.buckets import Decision

_SCRIPTS = Path(__file__).parent


class RedisBuckets:
    """admit.lua and settle.lua, through one pooled redis-py client with tight timeouts."""

    def __init__(self, url: str, timeout: float, lease_ttl: float) -> None:
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
        self._admit = self._redis.register_script((_SCRIPTS / "admit.lua").read_text())
        self._settle = self._redis.register_script((_SCRIPTS / "settle.lua").read_text())
        self._batch = ScriptBatcher(self._redis)

    @staticmethod
    def _keys(principal: Principal) -> list[str]:
        tag = "{" + principal.name + "}"  # one hash tag: one cluster slot for all three
        return [f"gw:{tag}:rpm", f"gw:{tag}:tpm", f"gw:{tag}:leases"]

    async def decide(self, principal: Principal, cost: int, lease: str) -> Decision:
        reply = await self._batch.call(
            self._admit,
            self._keys(principal),
            [
                principal.rpm or 0,
                principal.tpm or 0,
                principal.max_concurrent or 0,
                cost,
                lease,
                self._lease_ttl,
            ],
        )
        admitted, refused, wait, requests, tokens, _ = (
            v.decode() if isinstance(v, bytes) else str(v) for v in reply
        )
        return Decision(admitted == "1", refused, float(wait), float(requests), float(tokens))

    async def settle(self, principal: Principal, delta: int, lease: str) -> None:
        keys = self._keys(principal)
        await self._batch.call(self._settle, [keys[1], keys[2]], [principal.tpm or 0, delta, lease])

    async def aclose(self) -> None:
        await self._batch.aclose()
        await self._redis.aclose()
