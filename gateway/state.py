"""AppState: everything a request needs, built once per app in the lifespan (no globals)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.admission import Dispatcher
from gateway.keys import KeyStore
from gateway.metrics import Metrics
from gateway.models_config import ModelsConfig
from gateway.ratelimit import Limiter
from gateway.routing.health import Health
from gateway.routing.registry import Registry
from gateway.settings import Settings
from gateway.tracing import Tracing
from gateway.upstream import Upstream


@dataclass(frozen=True, slots=True)
class AppState:
    settings: Settings
    config: ModelsConfig
    registry: Registry
    upstream: Upstream
    metrics: Metrics
    keys: KeyStore | None  # None: auth switched off
    limiter: Limiter
    health: Health
    dispatcher: Dispatcher
    tracing: Tracing | None  # None: tracing off
    models_body: bytes  # GET /v1/models, rendered once
