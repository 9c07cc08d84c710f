"""Every prometheus_client object of the gateway, in a registry of its own (`gateway_` prefix)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway.errors import PROTOCOL_VIOLATIONS, WORKER_FAULTS
from gateway.record import ROUTE_REASONS, RequestRecord

# prometheus_client's multi-process mode: each process writes its samples to files in this
# directory, and /metrics (in whichever process answers) sums them.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)
# The gateway's own share of a request: tens of microseconds to a few milliseconds.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


_Family = TypeVar("_Family", Counter, Histogram)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Counter | Histogram, tuple[str, ...]], object] = {}
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by model, endpoint and HTTP status (499: the client went away).",
            ["model", "endpoint", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request arrival to the last byte of the answer.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streams: time from request arrival to the first event sent to the client.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "gateway_inter_token_latency_seconds",
            "Streams: mean gap between consecutive events of one response (one sample a stream).",
            ["model"],
            buckets=_TOKEN_GAP_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time the gateway itself added: duration minus queue wait minus time waiting on the "
            "worker (from sending the request to its last byte).",
            ["model", "endpoint"],
            buckets=_OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens",
            "Prompt tokens of answered requests, as the worker reported them.",
            ["model"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "gateway_completion_tokens",
            "Completion tokens of answered requests, as the worker reported them.",
            ["model"],
            registry=self.registry,
        )

        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Requests waiting in the admission queue for a free worker.",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time requests spent in the admission queue before a worker took them.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_rejections = Counter(
            "gateway_queue_rejections",
            "Requests answered 503 by admission: queue full, waited too long, no healthy worker.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.worker_inflight = Gauge(
            "gateway_worker_inflight",
            "Requests this gateway has in flight on each worker.",
            ["model", "worker"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.worker_healthy = Gauge(
            "gateway_worker_healthy",
            "1 while a worker takes traffic; 0 while it is down, ejected or not yet probed.",
            ["model", "worker"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.worker_saturation = Gauge(
            "gateway_worker_saturation",
            "Saturation from the worker's own metrics, max(waiting/5, kv_cache/0.8); 1 is full.",
            ["model", "worker"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.worker_draining = Gauge(
            "gateway_worker_draining",
            "1 while a worker is draining for maintenance (models.yaml drain: true): no new "
            "requests, those in flight finish.",
            ["model", "worker"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.config_reloads = Counter(
            "gateway_config_reloads",
            "Configuration files read again (SIGHUP or a change), by file: models, keys.",
            ["file"],
            registry=self.registry,
        )
        self.config_reload_errors = Counter(
            "gateway_config_reload_errors",
            "Reloads refused because the file was invalid (the running configuration stays).",
            ["file"],
            registry=self.registry,
        )
        self.worker_ejections = Counter(
            "gateway_worker_ejections",
            "Times a worker was taken out of rotation after consecutive failures.",
            ["model", "worker"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failed exchanges with a worker, by kind: unreachable, timeout, overloaded (its own "
            "503), failed (another 5xx, a broken protocol or a cut stream).",
            ["model", "worker", "kind"],
            registry=self.registry,
        )
        self.upstream_invalid = Counter(
            "gateway_upstream_invalid",
            "Worker answers that broke the protocol, by kind: not_json (a 200 that is not a "
            "JSON object), not_sse (stream bytes that are not SSE events), too_large (over "
            "GATEWAY_MAX_RESPONSE_BYTES), event_too_large (an event over GATEWAY_MAX_EVENT_BYTES).",
            ["model", "worker", "kind"],
            registry=self.registry,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries",
            "Requests sent again to another worker before any byte reached the client.",
            ["model"],
            registry=self.registry,
        )

        self.routing_decisions = Counter(
            "gateway_routing_decisions",
            "Worker choices, by reason: only (one worker), load (least loaded), session, cache "
            "(the prefix index's best match), fallback (a cache match overruled by load), length, "
            "retry.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.prefix_prompt_blocks = Counter(
            "gateway_prefix_prompt_blocks",
            "Cache-aware routing: prompt blocks of the requests sent to each worker.",
            ["model", "worker"],
            registry=self.registry,
        )
        self.prefix_cached_blocks = Counter(
            "gateway_prefix_cached_blocks",
            "Cache-aware routing: of those, the leading blocks the prefix index expected the "
            "worker's cache to hold (the predicted hit rate is the ratio of the two).",
            ["model", "worker"],
            registry=self.registry,
        )
        self.prefix_index_blocks = Gauge(
            "gateway_prefix_index_blocks",
            "Cache-aware routing: blocks the prefix index holds for each worker.",
            ["model", "worker"],
            registry=self.registry,
            multiprocess_mode="livemax",
        )

        self.ratelimit_rejections = Counter(
            "gateway_ratelimit_rejections",
            "Requests refused with 429, by key name and the limit that refused them.",
            ["key", "limit"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "gateway_redis_errors", "Redis calls that failed or timed out.", registry=self.registry
        )
        self.ratelimit_local_decisions = Counter(
            "gateway_ratelimit_local_decisions",
            "Limit decisions made without Redis because it was unavailable.",
            registry=self.registry,
        )
        self.ratelimit_degraded = Gauge(
            "gateway_ratelimit_degraded",
            "1 while Redis is unavailable and limits are local to each replica (or refused).",
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.key_tokens = Counter(
            "gateway_key_tokens",
            "Tokens used (prompt + completion, as the worker reported them), by key name.",
            ["key"],
            registry=self.registry,
        )
        # Per key name (from the keys file: bounded) and model (configured: bounded).
        self.key_requests = Counter(
            "gateway_key_requests",
            "Requests by key name and model that passed the key's limits (whatever the answer).",
            ["key", "model"],
            registry=self.registry,
        )
        self.key_prompt_tokens = Counter(
            "gateway_key_prompt_tokens",
            "Prompt tokens by key name and model, as the worker reported them.",
            ["key", "model"],
            registry=self.registry,
        )
        self.key_completion_tokens = Counter(
            "gateway_key_completion_tokens",
            "Completion tokens by key name and model, as the worker reported them.",
            ["key", "model"],
            registry=self.registry,
        )
        self.key_budget_used = Gauge(
            "gateway_key_budget_used_ratio",
            "Share of a key's token budget charged this period (day or month, UTC; in-flight "
            "reservations included), as of the key's last admitted request.",
            ["key", "period"],
            registry=self.registry,
            multiprocess_mode="mostrecent",
        )
        self.usage_missing = Counter(
            "gateway_usage_missing",
            "Responses without a usage report: settled on their token reservation.",
            registry=self.registry,
        )

    def forget_worker(self, model: str, worker: str) -> None:
        """A worker left the configuration: its live gauges go (its counters stay)."""
        for gauge in (
            self.worker_inflight,
            self.worker_healthy,
            self.worker_saturation,
            self.worker_draining,
            self.prefix_index_blocks,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(model, worker)

    def prepare(self, workers: dict[str, list[str]], endpoints: list[str]) -> None:
        """Create every per-model and per-worker series at zero, so dashboards and rate() see
        them from the start instead of from their first event (model -> its worker names)."""
        for model, names in workers.items():
            for child in (self.ttft, self.inter_token, self.prompt_tokens, self.completion_tokens):
                child.labels(model)
            self.upstream_retries.labels(model)
            for endpoint in endpoints:
                self.duration.labels(model, endpoint)
                self.overhead.labels(model, endpoint)
            for reason in ("full", "timeout", "no_healthy_backend"):
                self.queue_rejections.labels(model, reason)
            for reason in ROUTE_REASONS:
                self.routing_decisions.labels(model, reason)
            for worker in names:
                self.worker_ejections.labels(model, worker)
                for kind in WORKER_FAULTS:
                    self.upstream_errors.labels(model, worker, kind)
                for kind in PROTOCOL_VIOLATIONS:
                    self.upstream_invalid.labels(model, worker, kind)

    def of(self, family: _Family, *labels: str) -> _Family:
        """`family.labels(*labels)`, remembered: a finished request's series found with one dict
        lookup instead of prometheus_client's checks and lock per call. Only for series never
        removed (counters, histograms), whose labels are bounded (configured models, workers and
        key names, known endpoints and statuses)."""
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return cast(_Family, child)

    def observe(self, record: RequestRecord) -> None:
        """Count a finished request: status and duration for every request; for one that was
        relayed, the gateway's own overhead, stream timing, tokens and retries."""
        model = record.model or "-"
        endpoint = record.endpoint
        seconds = record.duration
        self.of(self.requests, model, endpoint, str(record.status)).inc()
        key = record.key
        if key is not None and record.model is not None:
            self.of(self.key_requests, key, model).inc()
        self.of(self.duration, model, endpoint).observe(seconds)
        if not record.relayed:
            return
        timing = record.timing
        own = seconds - timing.queued - timing.upstream
        self.of(self.overhead, model, endpoint).observe(max(own, 0.0))
        if timing.first_event is not None:
            self.of(self.ttft, model).observe(timing.first_event - timing.started)
            if timing.events > 1:
                gap = (timing.last_event - timing.first_event) / (timing.events - 1)
                self.of(self.inter_token, model).observe(gap)
        usage = record.usage
        if usage is not None:
            self.of(self.prompt_tokens, model).inc(usage.prompt)
            self.of(self.completion_tokens, model).inc(usage.completion)
            if key is not None:
                self.of(self.key_prompt_tokens, key, model).inc(usage.prompt)
                self.of(self.key_completion_tokens, key, model).inc(usage.completion)
        if record.retries:
            self.of(self.upstream_retries, model).inc(record.retries)
        if record.route is not None:
            self.of(self.routing_decisions, model, record.route).inc()
        if record.upstream_violation is not None and record.worker is not None:
            self.of(self.upstream_invalid, model, record.worker, record.upstream_violation).inc()
        if record.prompt_blocks and record.worker is not None:
            self.of(self.prefix_prompt_blocks, model, record.worker).inc(record.prompt_blocks)
            self.of(self.prefix_cached_blocks, model, record.worker).inc(record.cached_blocks)

    def render(self) -> tuple[bytes, str]:
        if MULTIPROC_ENV not in os.environ:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        forget_dead_processes(os.environ[MULTIPROC_ENV])
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged), CONTENT_TYPE_LATEST


_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(\d+)\.db")


def forget_dead_processes(path: str) -> None:
    """Drop the live gauges of gateway processes that died (uvicorn restarts a crashed one):
    their last in-flight, queue and health values must stop counting. Counters stay."""
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.fullmatch(name)
        if match is not None and not process_alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)), path)  # type: ignore[no-untyped-call]


def process_alive(pid: int) -> bool:
    """Whether a process of this id exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def multiprocess_metrics_dir() -> Iterator[str]:
    """Point prometheus_client's multi-process mode at an empty directory for this run.

    Must be set before the worker processes import prometheus_client. A directory given by
    the operator is emptied first (stale files would add old counts); ours is removed after.
    """
    given = os.environ.get(MULTIPROC_ENV)
    path = given or tempfile.mkdtemp(prefix="gateway-metrics-")
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if given is None:
            shutil.rmtree(path, ignore_errors=True)
