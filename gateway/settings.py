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

    # API keys (keys file of SHA-256 hashes, re-read when it changes). Switching auth off is
    # only for local use: every request is then one anonymous caller without limits.
    auth_enabled: bool = True
    keys_file: Path | None = None
    keys_reload_interval: Seconds = 1.0

    # Per-key limits live in Redis when it is configured (shared by every replica); without it
    # an in-process limiter applies the same rules to this process alone.
    redis_url: str | None = None
    redis_timeout: Seconds = 0.1
    # Redis unreachable: keep serving under per-replica limits (each replica may admit
    # `redis_fail_open_share` of each limit), or refuse with 503 (fail closed).
    redis_fail_open: bool = True
    redis_fail_open_share: Annotated[float, Field(gt=0, le=1)] = 1.0
    # Tokens reserved for a chat completion's answer when the request sets no max_tokens
    # (completions default to 16, as in vLLM); reconciled with the real usage afterwards.
    default_reserved_completion_tokens: Annotated[int, Field(ge=1)] = 1024

    max_body_bytes: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024
    # One per open stream (HTTP/1.1): beyond it requests wait for a free connection.
    max_upstream_connections: Annotated[int, Field(gt=0)] = 16384
