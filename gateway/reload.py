"""Reloading the configuration while serving: the models file on SIGHUP or when the watch sees
it change, the keys file on SIGHUP (it has a watch of its own). Models and workers come and go,
settings per model change and workers drain, without dropping a request in flight; an invalid
file keeps the running configuration, says which field is wrong and is counted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from gateway.api.openai import models_payload
from gateway.config.errors import ConfigError
from gateway.config.models import ModelsConfig, load_models_config
from gateway.config.placement import placement_errors
from gateway.request import Endpoint
from gateway.routing.discovery import Discovery, expand
from gateway.routing.registry import Change
from gateway.state import AppState

log = logging.getLogger("gateway.reload")


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (info.st_mtime_ns, info.st_size, info.st_ino)


def read_models(path: Path) -> ModelsConfig:
    """The models file, checked as at start (ConfigError names what is wrong)."""
    config = load_models_config(path)
    if problems := placement_errors(config):
        raise ConfigError(f"{path}: invalid worker placement\n  " + "\n  ".join(problems))
    return config


class Reloader:
    """Applies a models configuration: the file's, when it changes, and the same again when the
    DNS answers for its `dns` workers change (one path for both: routing/discovery.py)."""

    def __init__(
        self,
        state: AppState,
        path: Path | None,
        discovery: Discovery,
        source: ModelsConfig,
    ) -> None:
        self._state = state
        self._path = path  # None: the app was given its configuration, not a file
        self._stamp = _stamp(path) if path is not None else None
        self._discovery = discovery
        self.source = source  # as written, `dns` workers unresolved

    async def discover(self) -> None:
        """Follow the DNS answers of the `dns` workers (every GATEWAY_DNS_INTERVAL seconds)."""
        await self._discovery.watch(
            lambda: self.source, lambda: self.apply(self.source, "DNS answers changed")
        )

    async def watch(self, interval: float) -> None:
        """Reload the models file whenever it changes (checked every `interval` seconds)."""
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(OSError):
                await self.reload_models()

    def on_hup(self) -> None:
        """SIGHUP: both files, now, changed or not."""
        asyncio.get_running_loop().create_task(self.reload_models(force=True))
        if self._state.keys is not None:
            self._state.keys.reload_if_changed(force=True)

    async def reload_models(self, *, force: bool = False) -> bool:
        path = self._path
        if path is None:
            return False
        stamp = await asyncio.to_thread(_stamp, path)
        if stamp == self._stamp and not force:
            return False
        self._stamp = stamp
        metrics = self._state.metrics
        try:
            config = await asyncio.to_thread(read_models, path)
        except ConfigError as exc:
            metrics.config_reload_errors.labels("models").inc()
            log.error("keeping the running configuration: %s", exc)
            return False
        async with self._discovery.lock:
            await self._discovery.refresh(config)  # new `dns` workers start with addresses
            self.apply(config)
        metrics.config_reloads.labels("models").inc()
        return True

    def apply(self, source: ModelsConfig, why: str = "models file reloaded") -> None:
        """Make routing follow `source`, its `dns` workers expanded to their known addresses."""
        state = self._state
        self.source = source
        config = expand(source, self._discovery.resolved)
        change = state.registry.apply(config)
        state.dispatcher.sync(state.registry)
        state.health.adopt(change.added)
        state.kv_feeds.sync()
        for worker in change.removed:
            state.metrics.forget_worker(worker.model, worker.name)
        state.metrics.prepare(
            {m.name: [w.name for w in m.workers] for m in config.models},
            [endpoint.path for endpoint in Endpoint if endpoint.spec.cache_aware],
        )
        state.config = config
        state.models_body = models_payload(config)
        _log(change, why)


def _log(change: Change, why: str) -> None:
    def names(workers: list[str]) -> str:
        return ", ".join(workers) or "none"

    log.warning(
        "%s; models added: %s; removed: %s; workers added: %s; removed: %s; now draining: %s",
        why,
        names(change.added_models),
        names(change.removed_models),
        names([f"{w.model}/{w.name}" for w in change.added]),
        names([f"{w.model}/{w.name}" for w in change.removed]),
        names([f"{w.model}/{w.name}" for w in change.draining]),
    )
