"""Restarting launched workers one at a time, through the gateway's drain, so no request fails:
each worker is set to drain in the gateway's models file (the gateway stops sending it new
requests), its requests in flight finish, it restarts, and it takes traffic again before the
next one goes. `workers run` does this on SIGHUP (`python -m workers restart` sends it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx
import yaml

from gateway.config.models import ModelsConfig


def write_models(config: ModelsConfig, path: Path, draining: frozenset[str] = frozenset()) -> None:
    """`config` as a models file, with `drain: true` on the named workers; replaced atomically,
    so the gateway never reads half a file."""
    models = []
    for model in config.models:
        workers = [w.model_copy(update={"drain": w.name in draining}) for w in model.workers]
        models.append(model.model_copy(update={"workers": workers}))
    doc = config.model_copy(update={"models": models}).model_dump(mode="json", exclude_none=True)
    fresh = path.with_suffix(".new")
    fresh.write_text(yaml.safe_dump(doc, sort_keys=False))
    fresh.replace(path)


class Restartable(Protocol):
    def restart(self, worker_name: str) -> None: ...


class GatewayDrains:
    """Sets and clears `drain: true` in the models file a gateway serves, and watches its
    /ready for the effect."""

    def __init__(
        self, config: ModelsConfig, models_file: Path, gateway_url: str, reload: Callable[[], None]
    ) -> None:
        self._config = config
        self._file = models_file
        self._url = gateway_url
        self._reload = reload  # e.g. SIGHUP to the gateway (its file watch would do it too)

    def write(self, draining: frozenset[str] = frozenset()) -> None:
        write_models(self._config, self._file, draining)
        self._reload()

    def wait(self, worker: str, ready: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                state = self._worker_state(client, worker)
                if state is not None and ready(state):
                    return
                time.sleep(0.2)
        raise TimeoutError(f"worker {worker}: the gateway did not get there in {timeout:g}s")

    def _worker_state(self, client: httpx.Client, worker: str) -> dict[str, Any] | None:
        try:
            workers: dict[str, Any] = client.get(self._url + "/ready").json()["workers"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return next((v for k, v in workers.items() if k.endswith("/" + worker)), None)


def rolling_restart(
    workers: Restartable,
    drains: GatewayDrains,
    names: Sequence[str],
    *,
    timeout: float = 600.0,
    progress: Callable[[str], None] = print,
) -> None:
    """Restart `names` one after another, each drained first and back in rotation after."""
    for name in names:
        progress(f"restart {name}: draining")
        drains.write(frozenset({name}))
        drains.wait(name, lambda w: bool(w["draining"]) and w["inflight"] == 0, timeout)
        progress(f"restart {name}: no request in flight; restarting")
        workers.restart(name)
        drains.write()
        drains.wait(name, lambda w: bool(w["up"]) and not w["draining"], timeout)
        progress(f"restart {name}: back in rotation")
