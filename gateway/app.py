"""create_app(settings) -> FastAPI; the lifespan builds the AppState and closes it.

There is no import-time app: tests and `python -m gateway` each build their own."""

from __future__ import annotations

import asyncio
import atexit
import gc
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from gateway.api import openai, ops
from gateway.api.handlers import install_handlers
from gateway.api.middleware import HotRoute, RequestContext
from gateway.api.openai import models_payload
from gateway.api.relayed import endpoint_routes
from gateway.config.errors import ConfigError
from gateway.config.keys import KeyStore
from gateway.config.models import ModelsConfig, load_models_config
from gateway.config.placement import placement_errors
from gateway.config.settings import Settings
from gateway.limits.buckets import LocalBuckets
from gateway.limits.headroom import Headroom
from gateway.limits.limiter import Limiter
from gateway.limits.redis_buckets import RedisBuckets
from gateway.observe.logs import AccessSink, configure_logging, logging_access
from gateway.observe.metrics import Metrics
from gateway.observe.tracing import Tracing
from gateway.relay.lora_load import AdapterLoader
from gateway.relay.relay import Bounds, Relaying
from gateway.relay.upstream import RetryPolicy, Upstream
from gateway.reload import Reloader
from gateway.request import Endpoint
from gateway.routing.admission import Dispatcher, QueueSettings
from gateway.routing.cache_aware import PrefixSettings
from gateway.routing.discovery import Discovery, expand
from gateway.routing.ejections import Backoff, Ejections, LocalEjections, RedisEjections
from gateway.routing.health import Health, HealthSettings
from gateway.routing.kv_feeds import KvEventFeeds
from gateway.routing.prefix_share import PrefixShare
from gateway.routing.probe import HttpProbe
from gateway.routing.registry import Registry
from gateway.routing.response_homes import LocalHomes, RedisHomes, ResponseHomes
from gateway.server import signals
from gateway.server.drain import Drain
from gateway.server.protocol import LIMITS_KEY, ServerLimits
from gateway.server.run import raise_open_files_limit
from gateway.state import AppState

log = logging.getLogger("gateway")


def _key_store(settings: Settings, metrics: Metrics) -> KeyStore | None:
    if not settings.auth_enabled:
        return None
    if settings.keys_file is None:
        raise ConfigError(
            "API keys are on but GATEWAY_KEYS_FILE is not set: point it at a keys file "
            "(python -m gateway keys new ...), or set GATEWAY_AUTH_ENABLED=false for local use"
        )

    def counted(ok: bool) -> None:
        (metrics.config_reloads if ok else metrics.config_reload_errors).labels("keys").inc()

    return KeyStore(settings.keys_file, counted)


def _limiter(settings: Settings, metrics: Metrics) -> Limiter:
    shared = None
    if settings.redis_url:
        lease_ttl = settings.total_timeout + 30  # no request outlives the total timeout
        shared = RedisBuckets(
            settings.redis_url, settings.redis_timeout, lease_ttl, settings.limits_settle_delay
        )
    return Limiter(
        shared,
        LocalBuckets(settings.redis_fail_open_share if shared else 1.0),
        metrics,
        fail_open=settings.redis_fail_open,
        headroom=Headroom(settings.limits_early_window) if settings.limits_early_window else None,
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


def _prefix_settings(settings: Settings) -> PrefixSettings | None:
    if not settings.prefix_routing:
        return None
    return PrefixSettings(
        block_bytes=settings.prefix_block_bytes,
        bytes_per_token=settings.prefix_bytes_per_token,
        cache_tokens=settings.prefix_cache_tokens,
        balance=settings.prefix_balance,
        min_blocks=settings.prefix_min_blocks,
        exact=settings.prefix_kv_events,
    )


def _prefix_share(settings: Settings, registry: Registry) -> PrefixShare | None:
    """Replicas share their cache-aware routing decisions through Redis, when both are on."""
    if not settings.prefix_routing or settings.redis_url is None:
        return None
    share = PrefixShare(
        settings.redis_url, settings.prefix_redis_channel, registry, settings.redis_timeout
    )
    registry.share_with(share.publish)
    return share


def _response_homes(settings: Settings) -> ResponseHomes:
    if settings.redis_url is None:
        return LocalHomes(settings.response_home_ttl)
    return RedisHomes(settings.redis_url, settings.redis_timeout, settings.response_home_ttl)


def _server_limits(settings: Settings) -> ServerLimits:
    """The settings' limits, with open connections capped by what the open-files limit allows
    (each relayed request holds two: the client's and the worker's)."""
    open_files = raise_open_files_limit()
    connections = min(settings.max_connections, max((open_files - 64) // 2, 1))
    if connections < settings.max_connections:
        log.info(
            "open connections capped at %d by the open-files limit (%d)", connections, open_files
        )
    return ServerLimits(
        settings.max_header_bytes,
        settings.max_headers,
        settings.header_timeout,
        settings.body_timeout,
        connections,
    )


def _upstream(settings: Settings) -> Upstream:
    retry = RetryPolicy(settings.retry_attempts, settings.retry_budget)
    return Upstream(settings.connect_timeout, settings.max_upstream_connections, retry)


async def _build_state(
    settings: Settings, models: ModelsConfig, keys: KeyStore | None, metrics: Metrics
) -> AppState:
    """Every long-lived part, wired once; the worker health is known before it returns."""
    registry = Registry(
        models,
        settings.worker_url_template,
        settings.max_inflight_per_worker,
        _prefix_settings(settings),
    )
    health_settings = HealthSettings(
        settings.health_interval,
        settings.health_timeout,
        settings.eject_after_failures,
        settings.health_slow_probes,
    )
    queue_settings = QueueSettings(
        settings.queue_depth,
        settings.queue_timeout,
        health_settings.stale_after,
        settings.queue_aging_seconds,
    )
    dispatcher = Dispatcher(registry, queue_settings, metrics)
    probe = HttpProbe()
    health = Health(
        registry, probe, _ejections(settings), health_settings, metrics, dispatcher.wake
    )
    upstream = _upstream(settings)
    drain = Drain()
    bounds = Bounds(
        settings.first_byte_timeout,
        settings.idle_timeout,
        settings.total_timeout,
        settings.max_response_bytes,
        settings.max_event_bytes,
        settings.client_write_timeout,
    )
    state = AppState(
        settings=settings,
        config=models,
        registry=registry,
        upstream=upstream,
        probe=probe,
        relaying=Relaying(upstream, bounds, drain),
        metrics=metrics,
        keys=keys,
        limiter=_limiter(settings, metrics),
        health=health,
        dispatcher=dispatcher,
        models_body=models_payload(models),
        prefix_share=_prefix_share(settings, registry),
        kv_feeds=KvEventFeeds(registry, probe, settings.health_timeout),
        drain=drain,
        homes=_response_homes(settings),
        adapters=AdapterLoader(upstream, settings.lora_load_timeout),
    )
    await health.start()  # what is known of the workers, before the first request
    if state.prefix_share is not None:
        await state.prefix_share.start()
    await state.kv_feeds.start()
    return state


async def _close_state(state: AppState) -> None:
    await state.kv_feeds.aclose()
    if state.prefix_share is not None:
        await state.prefix_share.aclose()
    await state.health.aclose()
    await state.limiter.aclose()
    await state.homes.aclose()
    await state.upstream.aclose()
    await state.probe.aclose()


def _start_watches(state: AppState, reloader: Reloader) -> list[asyncio.Task[None]]:
    """The files re-read when they change: the keys file, the models file."""
    settings = state.settings
    watches = []
    if state.keys is not None:
        watches.append(asyncio.create_task(state.keys.watch(settings.keys_reload_interval)))
    if settings.config_reload_interval:
        watches.append(asyncio.create_task(reloader.watch(settings.config_reload_interval)))
    # Always: a reload may add the first `dns` worker (a round without any costs nothing).
    watches.append(asyncio.create_task(reloader.discover()))
    return watches


class GatewayApp(FastAPI):
    """FastAPI with RequestContext outermost, where it can dispatch the hot path directly."""

    def __init__(
        self,
        metrics: Metrics,
        hot_routes: Mapping[str, HotRoute],
        tracing: Tracing | None,
        access: AccessSink | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._context = (metrics, hot_routes, tracing, access)

    def build_middleware_stack(self) -> ASGIApp:
        metrics, hot_routes, tracing, access = self._context
        return RequestContext(
            super().build_middleware_stack(),
            metrics,
            hot_routes,
            tracing=tracing,
            access=access,
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
    models_file = settings.config if config is None else None  # reloaded on SIGHUP / change
    if problems := placement_errors(models):
        source = settings.config if config is None else "models config"
        raise ConfigError(f"{source}: invalid worker placement\n  " + "\n  ".join(problems))
    metrics = Metrics()
    keys = _key_store(settings, metrics)  # a missing or broken keys file fails here
    metrics.prepare(  # `dns` workers: once their addresses are known (reload.py)
        {m.name: [w.name for w in m.workers if w.dns is None] for m in models.models},
        [endpoint.path for endpoint in Endpoint if endpoint.spec.cache_aware],
    )
    if tracing is None and settings.otlp_endpoint:
        tracing = Tracing.to_otlp(settings.otlp_endpoint)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        discovery = Discovery(settings.dns_nameservers, settings.dns_interval, settings.dns_timeout)
        await discovery.refresh(models)  # the `dns` workers' addresses, before the first route
        resolved = expand(models, discovery.resolved)
        state = app.state.gateway = await _build_state(settings, resolved, keys, metrics)
        # Startup objects live as long as the process: keep them out of the cyclic GC's scans
        # (bench: full collections paused the loop ~46 ms, about once a second under load).
        gc.collect()
        gc.freeze()
        reloader = Reloader(state, models_file, discovery, models)
        if resolved is not models:
            reloader.apply(models, "DNS workers resolved")  # their metrics series, their log line
        watchers = _start_watches(state, reloader)
        signals.take_over(
            asyncio.get_running_loop(),
            on_exit=lambda: state.drain.begin(settings.drain_timeout),
            on_hup=reloader.on_hup,
        )
        try:
            # What the server layer reads: its limits, for each connection.
            yield {LIMITS_KEY: _server_limits(settings)}
        finally:
            for watcher in watchers:
                watcher.cancel()
            await _close_state(state)
            if tracing is not None:
                tracing.shutdown()  # exports what is buffered

    app = GatewayApp(
        metrics,
        endpoint_routes(),
        tracing,
        access if settings.access_log else None,
        title="LLM gateway",
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry instrumentation: off. The gateway makes its one span per
        # request itself (gateway/observe/tracing.py), and the check costs every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        # /v1/chat/completions/ is not a route: 404 in the envelope, not a 307 whose Location
        # is built from the client's Host header.
        redirect_slashes=False,
        redoc_url=None,
        openapi_url=None,
    )
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
