"""Process configuration, from `GATEWAY_*` environment variables and the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Seconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    config: Path = Path("configs/models.yaml")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: str = "info"
    # Gateway processes sharing the port (uvicorn workers); about one per core.
    processes: Annotated[int, Field(ge=1, le=256)] = 1

    # How the gateway reaches a worker it launched (`gpus` + `port` in models.yaml). In compose each
    # worker is its own host, so there it is "http://{name}:{port}".
    worker_url_template: str = "http://127.0.0.1:{port}"

    # Timeouts towards workers. Streams: connect, then first event, then idle gap between
    # events, all under the total. Non-streaming answers arrive whole: connect + total.
    connect_timeout: Seconds = 5.0
    first_byte_timeout: Seconds = 60.0
    idle_timeout: Seconds = 60.0
    total_timeout: Seconds = 600.0
    ready_probe_timeout: Seconds = 2.0

    max_body_bytes: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024
    max_upstream_connections: Annotated[int, Field(gt=0)] = 2048
