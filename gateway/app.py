"""create_app(settings) -> FastAPI; the lifespan builds the AppState and closes it.

There is no import-time app: tests and `python -m gateway` each build their own."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI

from gateway.api import openai, ops
from gateway.errors import install_handlers
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

    app = FastAPI(
        title="LLM gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    openai.add_completion_routes(app)
    app.include_router(openai.router)
    app.include_router(ops.router)
    install_handlers(app)
    app.add_middleware(RequestContext, metrics=metrics)
    return app
