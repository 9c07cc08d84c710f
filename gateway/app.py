"""create_app(settings) -> FastAPI; the lifespan builds the AppState and closes it.

There is no import-time app: tests and `python -m gateway` each build their own."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp

from gateway.api import openai, ops
from gateway.errors import install_handlers
from gateway.logs import configure_logging
from gateway.metrics import Metrics
from gateway.middleware import RequestContext
from gateway.models_config import ModelsConfig, load_models_config
from gateway.routing.registry import Registry
from gateway.settings import Settings
from gateway.state import AppState
from gateway.upstream import Upstream


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


class GatewayApp(FastAPI):
    """FastAPI with RequestContext outermost, where it can dispatch the hot path directly."""

    def __init__(self, metrics: Metrics, hot_routes: Mapping[str, ASGIApp], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._metrics = metrics
        self._hot_routes = hot_routes

    def build_middleware_stack(self) -> ASGIApp:
        return RequestContext(super().build_middleware_stack(), self._metrics, self._hot_routes)


def create_app(settings: Settings, config: ModelsConfig | None = None) -> FastAPI:
    """Build the app. `config` defaults to the file named by settings.config (read now, so a bad
    file fails at start, not at the first request)."""
    models = config if config is not None else load_models_config(settings.config)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upstream = Upstream(settings)
        app.state.gateway = AppState(
            settings=settings,
            config=models,
            registry=Registry(models, settings.worker_url_template),
            upstream=upstream,
            metrics=metrics,
            models_body=models_payload(models),
        )
        try:
            yield
        finally:
            await upstream.aclose()

    hot_routes = openai.completion_routes()
    app = GatewayApp(
        metrics,
        hot_routes,
        title="LLM gateway",
        lifespan=lifespan,
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
    configure_logging(settings.log_level)
    return create_app(settings)
