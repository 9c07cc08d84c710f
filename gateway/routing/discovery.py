"""Workers found by DNS: a models.yaml worker `{name: w, dns: "host:port"}` stands for every
address `host` resolves to (e.g. a Kubernetes headless Service: one A record per ready pod).

Every GATEWAY_DNS_INTERVAL seconds each such name is resolved again (dnspython's async resolver;
/etc/resolv.conf, or GATEWAY_DNS_NAMESERVERS). The answer is turned into plain `url` workers
named `w@<ip>:<port>` and applied exactly as a reload of models.yaml is (gateway/reload.py): a
new address is a new worker (probed, down until its first good probe), an address that left is
removed from its route (no new requests; those in flight finish on it), every address has its
own health, load and metrics. A failed resolution, or one without any address, keeps the last
known set and is logged once per incident (again when it recovers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config.models import ModelsConfig, WorkerConfig, split_host_port
from gateway.config.settings import parse_nameserver

if TYPE_CHECKING:
    # dnspython is imported when a `dns` worker is first resolved: a gateway without any does
    # not pay for it at start (each of its processes imports everything again).
    import dns.asyncresolver

log = logging.getLogger("gateway.discovery")

# (model name, worker name) of a `dns` worker -> its addresses, sorted.
Resolved = Mapping[tuple[str, str], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Target:
    model: str
    worker: str
    host: str
    port: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.worker)


def dns_targets(config: ModelsConfig) -> list[Target]:
    return [
        Target(model.name, worker.name, *split_host_port(worker.dns))
        for model in config.models
        for worker in model.workers
        if worker.dns is not None
    ]


def address_url(ip: str, port: int) -> str:
    return f"http://[{ip}]:{port}" if ":" in ip else f"http://{ip}:{port}"


def address_name(worker: str, ip: str, port: int) -> str:
    return f"{worker}@[{ip}]:{port}" if ":" in ip else f"{worker}@{ip}:{port}"


def expand(config: ModelsConfig, resolved: Resolved) -> ModelsConfig:
    """`config` with each `dns` worker replaced by one `url` worker per resolved address (none
    while nothing is known yet). Its `drain` applies to every address."""
    if not any(w.dns is not None for m in config.models for w in m.workers):
        return config
    models = []
    for model in config.models:
        workers: list[WorkerConfig] = []
        for worker in model.workers:
            if worker.dns is None:
                workers.append(worker)
                continue
            _, port = split_host_port(worker.dns)
            for ip in resolved.get((model.name, worker.name), ()):
                # Built, not validated: `name@ip:port` is not a name a file may use, on purpose.
                workers.append(
                    WorkerConfig.model_construct(
                        name=address_name(worker.name, ip, port),
                        url=address_url(ip, port),
                        drain=worker.drain,
                        gpus=None,
                        port=None,
                        dns=None,
                    )
                )
        models.append(model.model_copy(update={"workers": workers}))
    return config.model_copy(update={"models": models})


def diff(old: Iterable[str], new: Iterable[str]) -> tuple[list[str], list[str]]:
    """(added, removed) addresses."""
    before, after = set(old), set(new)
    return sorted(after - before), sorted(before - after)


def make_resolver(nameservers: list[str], timeout: float) -> dns.asyncresolver.Resolver:
    import dns.asyncresolver
    import dns.nameserver

    resolver = dns.asyncresolver.Resolver(configure=not nameservers)
    if nameservers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(ip, port)
            for ip, port in (parse_nameserver(n) for n in nameservers)
        ]
    resolver.lifetime = timeout
    resolver.timeout = timeout
    resolver.cache = None  # every round asks again: the TTL is ours (the interval), not theirs
    return resolver


class ResolveFailed(Exception):
    pass


async def resolve(resolver: dns.asyncresolver.Resolver, host: str) -> tuple[str, ...]:
    """Every IPv4 and IPv6 address of `host`, sorted; an IP literal is itself."""
    import dns.exception
    import dns.rdatatype
    import dns.resolver

    try:
        return (str(ipaddress.ip_address(host)),)
    except ValueError:
        pass
    found: set[str] = set()
    errors: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            answer = await resolver.resolve(host, rdtype, search=True)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN) as exc:
            errors.append(type(exc).__name__)
            continue
        except dns.exception.DNSException as exc:
            raise ResolveFailed(f"{type(exc).__name__}: {exc}") from exc
        found.update(rdata.address for rdata in answer)
    if not found:
        raise ResolveFailed(f"no address ({', '.join(errors)})")
    return tuple(sorted(found))


class Discovery:
    """The addresses of every `dns` worker, as last resolved; `refresh` says when they changed,
    and the caller applies them (gateway/reload.py)."""

    def __init__(
        self,
        nameservers: list[str],
        interval: float,
        timeout: float,
    ) -> None:
        self._resolver: dns.asyncresolver.Resolver | None = None  # made when first needed
        self._nameservers = nameservers
        self._timeout = timeout
        self.interval = interval
        self._resolved: dict[tuple[str, str], tuple[str, ...]] = {}
        self._failing: set[tuple[str, str]] = set()  # incidents already logged
        # Held from a refresh to the apply of its result: a round of the watch and a reload of
        # the file never interleave (the older source would undo the newer's addresses).
        self.lock = asyncio.Lock()

    @property
    def resolved(self) -> Resolved:
        return self._resolved

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            self._resolver = make_resolver(self._nameservers, self._timeout)
        return self._resolver

    async def refresh(self, config: ModelsConfig) -> bool:
        """Resolve every `dns` worker of `config` once; True when any address set changed."""
        targets = dns_targets(config)
        wanted = {t.key for t in targets}
        changed = False
        for key in [k for k in self._resolved if k not in wanted]:  # left the file
            del self._resolved[key]
            self._failing.discard(key)
            changed = True
        if not targets:
            return changed
        import dns.exception

        try:
            resolver = self._get_resolver()
        except dns.exception.DNSException as exc:  # no /etc/resolv.conf, no nameserver in it
            failed = ResolveFailed(f"no resolver: {exc}")
            for target in targets:
                self._take(target, failed)  # keeps what is known
            return changed
        results = await asyncio.gather(
            *(resolve(resolver, t.host) for t in targets), return_exceptions=True
        )
        for target, result in zip(targets, results, strict=True):
            changed |= self._take(target, result)
        return changed

    def _take(self, target: Target, result: tuple[str, ...] | BaseException) -> bool:
        key = target.key
        where = f"{target.model}/{target.worker} ({target.host}:{target.port})"
        if isinstance(result, BaseException):
            if not isinstance(result, ResolveFailed | OSError):
                raise result
            if key not in self._failing:
                self._failing.add(key)
                known = self._resolved.get(key, ())
                log.error(
                    "DNS resolution of worker %s failed: %s; keeping the %d known address(es)",
                    where,
                    result,
                    len(known),
                )
            return False
        if key in self._failing:
            self._failing.discard(key)
            log.warning("DNS resolution of worker %s works again", where)
        old = self._resolved.get(key, ())
        if old == result:
            return False
        added, removed = diff(old, result)
        self._resolved[key] = result
        log.warning(
            "worker %s: addresses added: %s; removed: %s",
            where,
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
        )
        return True

    async def watch(self, source: Callable[[], ModelsConfig], apply: Callable[[], None]) -> None:
        """Every `interval` seconds: resolve the `dns` workers of `source()`; `apply()` on a
        change."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with self.lock:
                    if await self.refresh(source()):
                        apply()
            except Exception:
                log.exception("DNS discovery round failed; trying again next round")
