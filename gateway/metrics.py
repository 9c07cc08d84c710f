"""Every prometheus_client object of the gateway, in a registry of its own (`gateway_` prefix)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

# prometheus_client's multi-process mode: each process writes its samples to files in this
# directory, and /metrics (in whichever process answers) sums them.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.usage_missing = Counter(
            "gateway_usage_missing",
            "Responses without a usage report: settled on their token reservation.",
            registry=self.registry,
        )

    def observe_request(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.duration.labels(model, endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        if MULTIPROC_ENV not in os.environ:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged), CONTENT_TYPE_LATEST


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
