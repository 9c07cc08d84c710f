"""create_app(settings) -> FastAPI; the lifespan builds the AppState and closes it.

There is no import-time app: tests and `python -m gateway` each build their own."""

from __future__ import annotations

import asyncio
import atexit
import gc
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp

from gateway.admission import Dispatcher, QueueSettings
from gateway.api import openai, ops
from gateway.errors import install_handlers
from gateway.keys import KeyStore
from gateway.logs import AccessSink, configure_logging, logging_access
from gateway.metrics import Metrics
from gateway.middleware import RequestContext
from gateway.models_config import ConfigError, ModelsConfig, load_models_config
from gateway.placement import placement_errors
from gateway.ratelimit import Limiter, LocalBuckets, RedisBuckets
from gateway.routing.ejections import Backoff, Ejections, LocalEjections, RedisEjections
from gateway.routing.health import Health, HealthSettings
from gateway.routing.registry import Registry
from gateway.settings import Settings
from gateway.state import AppState
from gateway.tracing import Tracing
from gateway.upstream import Upstream
from gateway.validation import Endpoint


def models_payload(config: ModelsConfig) -> bytes:
    created = int(time.time())
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": m.name, "object": "model", "created": created, "owned_by": "gateway"}
                for m in config.models
            ],
        }
    )


def _key_store(settings: Settings) -> KeyStore | None:
    if not settings.auth_enabled:
        return None
    if settings.keys_file is None:
        raise ConfigError(
            "API keys are on but GATEWAY_KEYS_FILE is not set: point it at a keys file "
            "(python -m gateway keys new ...), or set GATEWAY_AUTH_ENABLED=false for local use"
        )
    return KeyStore(settings.keys_file)


def _limiter(settings: Settings, metrics: Metrics) -> Limiter:
    redis = None
    if settings.redis_url:
        lease_ttl = settings.total_timeout + 30  # no request outlives the total timeout
        redis = RedisBuckets(settings.redis_url, settings.redis_timeout, lease_ttl)
    return Limiter(
        redis,
        LocalBuckets(settings.redis_fail_open_share if redis else 1.0),
        metrics,
        fail_open=settings.redis_fail_open,
    )


def _ejections(settings: Settings) -> Ejections:
    backoff = Backoff(
        settings.eject_base_seconds, settings.eject_max_seconds, settings.eject_reset_seconds
    )
    if not settings.redis_url:
        return LocalEjections(backoff)
    return RedisEjections(
        settings.redis_url, settings.redis_timeout, backoff, settings.health_redis_prefix
    )


class GatewayApp(FastAPI):
    """FastAPI with RequestContext outermost, where it can dispatch the hot path directly."""

    def __init__(
        self,
        metrics: Metrics,
        hot_routes: Mapping[str, ASGIApp],
        access: AccessSink | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics
        self._hot_routes = hot_routes
        self._access = access

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(
            super().build_middleware_stack(),
            self._metrics,
            self._hot_routes,
            access=self._access,
        )


def create_app(
    settings: Settings,
    config: ModelsConfig | None = None,
    tracing: Tracing | None = None,
    access: AccessSink = logging_access,
) -> FastAPI:
    """Build the app. `config` defaults to the file named by settings.config (read now, so a bad
    file fails at start, not at the first request). `tracing` defaults to OTLP export when
    settings.otlp_endpoint is set (tests pass one with an in-memory exporter). `access` takes
    the access lines (configure_logging's writer; plain logging by default)."""
    models = config if config is not None else load_models_config(settings.config)
    if problems := placement_errors(models):
        source = settings.config if config is None else "models config"
        raise ConfigError(f"{source}: invalid worker placement\n  " + "\n  ".join(problems))
    keys = _key_store(settings)
    metrics = Metrics()
    metrics.prepare(
        {m.name: [w.name for w in m.workers] for m in models.models},
        [endpoint.value for endpoint in Endpoint],
    )
    if tracing is None and settings.otlp_endpoint:
        tracing = Tracing.to_otlp(settings.otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = Upstream(settings)
        limiter = _limiter(settings, metrics)
        registry = Registry(models, settings.worker_url_template, settings.max_inflight_per_worker)
        health_settings = HealthSettings(
            settings.health_interval, settings.health_timeout, settings.eject_after_failures
        )
        dispatcher = Dispatcher(
            registry,
            QueueSettings(
                settings.queue_depth, settings.queue_timeout, health_settings.stale_after
            ),
            metrics,
        )
        health = Health(
            registry, upstream, _ejections(settings), health_settings, metrics, dispatcher.wake
        )
        app.state.gateway = AppState(
            settings=settings,
            config=models,
            registry=registry,
            upstream=upstream,
            metrics=metrics,
            keys=keys,
            limiter=limiter,
            health=health,
            dispatcher=dispatcher,
            tracing=tracing,
            models_body=models_payload(models),
        )
        await health.start()  # what is known of the workers, before the first request
        # Startup objects live as long as the process: keep them out of the cyclic GC's scans
        # (bench: full collections paused the loop ~46 ms, about once a second under load).
        gc.collect()
        gc.freeze()
        watcher = None
        if keys is not None:
            watcher = asyncio.create_task(keys.watch(settings.keys_reload_interval))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            await health.aclose()
            await limiter.aclose()
            if tracing is not None:
                tracing.shutdown()  # exports what is buffered
            await upstream.aclose()

    hot_routes = openai.completion_routes()
    app = GatewayApp(
        metrics,
        hot_routes,
        access if settings.access_log else None,
        title="LLM gateway",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry instrumentation: off. The gateway makes its one span per
        # request itself (gateway/tracing.py), and the check costs every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    openai.add_completion_routes(app, hot_routes)
    app.include_router(openai.router)
    app.include_router(ops.router)
    install_handlers(app)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for each process of a multi-process gateway: settings from GATEWAY_* variables."""
    settings = Settings()
    writer = configure_logging(settings.log_level)
    atexit.register(writer.stop)  # flush at exit
    return create_app(settings, access=writer.access)
