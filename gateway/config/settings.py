"""Process configuration, from `GATEWAY_*` environment variables and the command line."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Seconds = Annotated[float, Field(gt=0)]


def parse_nameserver(text: str) -> tuple[str, int]:
    """A DNS nameserver, `ip` or `ip:port` (`[v6]:port`) -> (ip, port); port 53 by default."""
    text = text.strip()
    try:
        return str(ipaddress.ip_address(text)), 53
    except ValueError:
        pass
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        raise ValueError(f"a DNS nameserver must be ip or ip:port, got {text!r}") from None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    config: Path = Path("configs/models.yaml")
    # Seconds between checks of the models file for changes (a change is applied without a
    # restart, as SIGHUP does); 0: only on SIGHUP.
    config_reload_interval: Annotated[float, Field(ge=0)] = 2.0
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    log_level: str = "info"
    # One JSON line per request (request id, key name, model, worker, status, tokens, timings).
    access_log: bool = True
    # Tracing: with an OTLP/HTTP endpoint (e.g. http://collector:4318/v1/traces), one span per
    # completion request, following the OpenTelemetry GenAI conventions. Off when unset.
    otlp_endpoint: str | None = None
    # Gateway processes sharing the port (uvicorn workers); about one per core.
    processes: Annotated[int, Field(ge=1, le=256)] = 1

    # Workers given as `dns: host:port` in models.yaml: resolved again every `dns_interval`
    # seconds (each address is a worker), each query given `dns_timeout` seconds. Nameservers
    # (ip or ip:port, a JSON list) instead of /etc/resolv.conf's; empty: /etc/resolv.conf.
    dns_interval: Seconds = 5.0
    dns_timeout: Seconds = 2.0
    dns_nameservers: list[str] = []

    @field_validator("dns_nameservers")
    @classmethod
    def _nameservers_are_addresses(cls, value: list[str]) -> list[str]:
        for nameserver in value:
            parse_nameserver(nameserver)  # ValueError names the bad one
        return value

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
    # A finished request's settle (refund, lease, usage) waits up to this long for the next
    # admit to ride in (one Redis round trip per request); with none coming it goes alone.
    limits_settle_delay: Seconds = 0.005
    # A request of a key far from all its limits (each at most half used, judged from the key's
    # last decision, at most this many seconds old) goes to its worker while its admit is in
    # flight; the admit's answer is awaited before the client's answer starts, and a refusal
    # still refuses and cuts the worker's request off. 0: every request waits for its admit.
    limits_early_window: Annotated[float, Field(ge=0)] = 1.0

    # Worker health. Active: GET /health and /metrics every `health_interval` seconds (0 = off).
    # Passive: `eject_after_failures` failed exchanges in a row (0 = never) eject a worker for
    # `eject_base_seconds`, doubling on each ejection in a row up to `eject_max_seconds`; the
    # count is forgotten after `eject_reset_seconds` without one.
    health_interval: Annotated[float, Field(ge=0)] = 1.0
    health_timeout: Seconds = 1.0
    eject_after_failures: Annotated[int, Field(ge=0)] = 3
    # Probes of /health in a row with no answer within health_timeout before a worker is taken
    # out (a refused connection or an error status takes it out at once).
    health_slow_probes: Annotated[int, Field(ge=1)] = 3
    eject_base_seconds: Seconds = 2.0
    eject_max_seconds: Seconds = 60.0
    eject_reset_seconds: Seconds = 120.0
    # Redis keys of the shared worker health start with this (one prefix per deployment).
    health_redis_prefix: str = "gateway:worker:"

    # Admission: a gateway process keeps at most this many requests in flight on one worker
    # (models.yaml may set its own per model); beyond it, or when the worker reports itself
    # saturated, requests wait in a per-model queue of `queue_depth` for `queue_timeout` seconds.
    max_inflight_per_worker: Annotated[int, Field(ge=1)] = 256
    queue_depth: Annotated[int, Field(ge=0)] = 512
    queue_timeout: Seconds = 30.0
    # Priority classes in the queue: every this many seconds of waiting promote a waiting
    # class by one (batch reaches interactive after 2x, goes first after 3x): none starves.
    queue_aging_seconds: Seconds = 5.0
    # Requests with the same x-session-id header (or body `user`) go to the same worker.
    session_affinity: bool = True
    # Cache-aware routing, for models with more than one worker: a request goes to the worker
    # whose vLLM prefix cache is expected to hold most of its prompt (an approximate index of
    # what was sent where, shared by the replicas through Redis), unless that worker queues more
    # than the least loaded by more than `prefix_balance` (pressure: the larger of in-flight /
    # cap and vLLM's waiting requests / 5; a saturated worker is never chosen).
    prefix_routing: bool = True
    prefix_block_bytes: Annotated[int, Field(ge=16)] = 512  # ~ one 128-token vLLM block
    prefix_bytes_per_token: Annotated[float, Field(gt=0)] = 4.0
    # A worker's KV cache in tokens when its /metrics has no vllm:cache_config_info.
    prefix_cache_tokens: Annotated[int, Field(ge=1)] = 200_000
    prefix_balance: Annotated[float, Field(ge=0)] = 0.25
    prefix_min_blocks: Annotated[int, Field(ge=1)] = 1
    # Precise mode: follow each worker's KV-cache events (vLLM --kv-events-config, found at its
    # /kv_event_sources), so the index holds what a worker's cache really holds.
    prefix_kv_events: bool = False
    # Redis pub/sub channel on which replicas share their routing decisions (one per deployment).
    prefix_redis_channel: str = "gateway:prefix"
    # Steer prompts by size (body bytes) to workers by bucket: boundaries between buckets.
    # Off by default: it did not pay in the measurement (see the README).
    length_steering: bool = False
    length_buckets_bytes: list[Annotated[int, Field(gt=0)]] = [2048]

    # Retries, before any byte reached the client only: a worker unreachable or answering 503
    # is retried on another worker, at most `retry_attempts` attempts within `retry_budget`.
    retry_attempts: Annotated[int, Field(ge=1)] = 3
    retry_budget: Seconds = 10.0

    # What a client may send, and how slowly (every process, whatever the server under it):
    # request line + headers, header fields, seconds to send the head (from the connection or
    # the previous answer) and the body, open connections per process (beyond: 503 and close;
    # also capped by the open-files limit, raised to its hard limit at start).
    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 * 1024
    max_headers: Annotated[int, Field(ge=8)] = 100
    header_timeout: Seconds = 10.0
    body_timeout: Seconds = 60.0
    max_connections: Annotated[int, Field(ge=1)] = 16384
    # A streaming client that reads nothing for this long is dropped (status 499, code
    # client_write_timeout); its worker is not blamed and its slots are freed at once.
    client_write_timeout: Seconds = 30.0
    # SIGTERM: /ready turns 503, no new connections, and requests in flight get this long to
    # finish before each is ended (a stream with an error event and [DONE]).
    drain_timeout: Seconds = 30.0
    max_body_bytes: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024
    # Responses API: how long the gateway remembers which worker holds a stored response
    # (in Redis when configured, shared by every replica; else in this process).
    response_home_ttl: Seconds = 86400.0
    # LoRA: how long loading an adapter on a worker at run time may take (runtime_lora).
    lora_load_timeout: Seconds = 120.0
    # A worker's answer larger than this (non-streaming), or one stream event larger than
    # `max_event_bytes`, is refused as a broken protocol (502 upstream_error).
    max_response_bytes: Annotated[int, Field(gt=0)] = 64 * 1024 * 1024
    max_event_bytes: Annotated[int, Field(gt=0)] = 1024 * 1024
    # One per open stream (HTTP/1.1): beyond it requests wait for a free connection.
    max_upstream_connections: Annotated[int, Field(gt=0)] = 16384
