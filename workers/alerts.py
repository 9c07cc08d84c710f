"""The alert rules (deploy/prometheus/alerts.yml), written as data: each alert is one or more
conditions, each a PromQL expression that returns a series while its inputs exist plus the test
that turns it into an alert (`> 0.05`). The live monitoring test queries every condition's
expression without its test, so an alert can't silently watch a series that doesn't exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["critical", "warning"]

# Thresholds: starting points, to be tuned to the deployment's own SLOs (README "Monitoring").
QUEUE_DEPTH_HIGH = 20
ERROR_RATIO_HIGH = 0.05
TTFT_P99_HIGH_SECONDS = 3
GPU_MEMORY_HIGH = 0.95
REDIS_ERRORS_PER_SECOND_HIGH = 0.02  # about one a minute


@dataclass(frozen=True)
class Condition:
    series: str  # PromQL with a value while its inputs exist, firing or not
    test: str  # the comparison that makes it fire, e.g. "> 0.05"


@dataclass(frozen=True)
class Alert:
    name: str
    when: tuple[Condition, ...]  # all of them (`and`), matched on the series' labels
    wait: str  # how long it must hold before it fires (the rule's `for`)
    severity: Severity
    summary: str  # one line; may use {{ $labels.x }} and {{ $value }} (the first condition's)
    action: str  # what the operator should look at and do

    @property
    def expr(self) -> str:
        # A comparison binds tighter than `and`: `a > 1 and b > 0` needs no parentheses.
        return " and ".join(f"{c.series} {c.test}" for c in self.when)

    def rule(self) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.wait,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary, "description": self.action},
        }


_FIVE_XX = 'sum by (model) (rate(gateway_requests_total{status=~"5.."}[5m]))'
_ALL = "sum by (model) (rate(gateway_requests_total[5m]))"
_TTFT_P99 = (
    "histogram_quantile(0.99, sum by (model, le) "
    "(rate(gateway_time_to_first_token_seconds_bucket[5m])))"
)
_GPU_MEMORY = "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)"

ALERTS: tuple[Alert, ...] = (
    Alert(
        name="GatewayQueueGrowing",
        when=(
            Condition("sum by (model) (gateway_queue_depth)", f"> {QUEUE_DEPTH_HIGH}"),
            Condition("sum by (model) (deriv(gateway_queue_depth[10m]))", "> 0"),
        ),
        wait="5m",
        severity="warning",
        summary="{{ $labels.model }}: {{ $value }} requests queued in the gateway, and growing",
        action=(
            "Requests for this model arrive faster than its workers finish them; once the "
            "queue is full the gateway answers 503. On the dashboard, check per-worker load and "
            "KV-cache usage: if every worker is busy, add a replica (a worker on free GPUs in "
            "configs/models.yaml, then `python -m workers render` and `docker compose -f "
            "compose.gpu.yml up -d`); if a worker is unhealthy, fix that first."
        ),
    ),
    Alert(
        name="GatewayErrorRatioHigh",
        when=(Condition(f"{_FIVE_XX} / {_ALL}", f"> {ERROR_RATIO_HIGH}"),),
        wait="5m",
        severity="critical",
        summary="{{ $labels.model }}: {{ $value | humanizePercentage }} of requests end in 5xx",
        action=(
            "Clients are getting server errors. The dashboard's upstream-errors panel says "
            "which kind: unreachable or timeout (a worker is down or stuck: see its logs, "
            "`docker compose -f compose.gpu.yml logs WORKER`), overloaded (vLLM's own queue is "
            "full), or admission 503s (the gateway's queue is full: add capacity)."
        ),
    ),
    Alert(
        name="GatewayTimeToFirstTokenHigh",
        when=(Condition(_TTFT_P99, f"> {TTFT_P99_HIGH_SECONDS}"),),
        wait="10m",
        severity="warning",
        summary="{{ $labels.model }}: time to first token p99 is {{ $value | humanizeDuration }}",
        action=(
            "Streams wait too long for their first token. Compare the gateway's TTFT with "
            "vLLM's: if vLLM's is high too, the workers are saturated (queue depth, KV-cache "
            "usage, preemptions): add a replica; if only the gateway's is high, requests wait in "
            "the gateway's queue (queue wait panel) or the gateway itself is short of CPU "
            "(overhead panel)."
        ),
    ),
    Alert(
        name="GatewayModelUnavailable",
        when=(Condition("max by (model) (gateway_worker_healthy)", "== 0"),),
        wait="1m",
        severity="critical",
        summary="{{ $labels.model }}: no healthy worker; every request for it fails",
        action=(
            "Every worker of this model is down or ejected. See each worker's state (`docker "
            "compose -f compose.gpu.yml ps`) and logs; a worker still loading its weights "
            "shows `health: starting`. Restart a crashed worker; check GPU memory and the "
            "driver (`nvidia-smi`) if it keeps failing."
        ),
    ),
    Alert(
        name="GatewayWorkerUnhealthy",
        when=(Condition("max by (model, worker) (gateway_worker_healthy)", "== 0"),),
        wait="3m",
        severity="warning",
        summary="{{ $labels.model }}: worker {{ $labels.worker }} takes no traffic",
        action=(
            "The gateway has taken this worker out of rotation (failed health probes or "
            "consecutive errors); its model runs on the remaining workers at reduced capacity. "
            "Read the worker's logs and restart it; the gateway sends it traffic again as soon "
            "as its /health answers."
        ),
    ),
    Alert(
        name="VLLMWorkerDown",
        when=(Condition('up{job="vllm"}', "== 0"),),
        wait="3m",
        severity="warning",
        summary="Prometheus cannot scrape worker {{ $labels.worker }} ({{ $labels.instance }})",
        action=(
            "The vLLM server does not answer /metrics: it is down, restarting or hung. Check "
            "`docker compose -f compose.gpu.yml ps` and the worker's logs. Its vLLM metrics "
            "(KV cache, running requests) are missing from the dashboard meanwhile."
        ),
    ),
    Alert(
        name="GatewayDown",
        when=(Condition('up{job="gateway"}', "== 0"),),
        wait="2m",
        severity="critical",
        summary="Prometheus cannot scrape the gateway ({{ $labels.instance }})",
        action=(
            "The gateway does not answer /metrics: clients are probably failing too, and "
            "every other gateway alert is blind. Check the gateway container's state and logs."
        ),
    ),
    Alert(
        name="GPUMemoryHigh",
        when=(Condition(_GPU_MEMORY, f"> {GPU_MEMORY_HIGH}"),),
        wait="5m",
        severity="warning",
        summary=(
            "GPU {{ $labels.gpu }} on {{ $labels.Hostname }}: "
            "{{ $value | humanizePercentage }} of its memory in use"
        ),
        action=(
            "vLLM reserves --gpu-memory-utilization (0.9 by default) of each GPU at start, so "
            "about 90% is normal; above 95% another process holds GPU memory or the setting is "
            "too high, and a worker may fail with out-of-memory. Find the process with "
            "`nvidia-smi`; lower gpu_memory_utilization for that model in configs/models.yaml."
        ),
    ),
    Alert(
        name="DCGMExporterDown",
        when=(Condition('up{job="dcgm"}', "== 0"),),
        wait="5m",
        severity="warning",
        summary="Prometheus cannot scrape the DCGM exporter ({{ $labels.instance }})",
        action=(
            "GPU memory is not monitored meanwhile (GPUMemoryHigh cannot fire). Check the "
            "dcgm-exporter container's logs; it needs the NVIDIA container toolkit."
        ),
    ),
    Alert(
        name="GatewayRedisErrors",
        when=(
            Condition(
                "sum by (instance) (rate(gateway_redis_errors_total[5m]))",
                f"> {REDIS_ERRORS_PER_SECOND_HIGH}",
            ),
        ),
        wait="5m",
        severity="warning",
        summary='{{ $labels.instance }}: {{ printf "%.2f" $value }} Redis errors a second',
        action=(
            "Redis calls fail or time out, so rate limits are enforced per gateway replica "
            "(fail-open) or requests are refused (fail-closed). Check Redis (`docker compose "
            "-f compose.gpu.yml logs redis`, `redis-cli ping`) and its latency."
        ),
    ),
    Alert(
        name="GatewayRateLimiterDegraded",
        when=(Condition("max by (instance) (gateway_ratelimit_degraded)", "== 1"),),
        wait="2m",
        severity="warning",
        summary="{{ $labels.instance }}: rate limits run without Redis",
        action=(
            "The gateway cannot reach Redis and decides limits on its own (each replica "
            "admits its share) or refuses requests, as GATEWAY_REDIS_FAIL_OPEN says. Restore "
            "Redis; the gateway returns to shared limits by itself."
        ),
    ),
)


def alerts_document() -> dict[str, Any]:
    return {"groups": [{"name": "llm-gateway", "rules": [alert.rule() for alert in ALERTS]}]}
