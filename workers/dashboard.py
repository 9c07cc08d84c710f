"""The Grafana dashboard (deploy/grafana/dashboards/gateway.json), written as data: rows of
panels, each panel a few PromQL queries. The four signals come first (tokens/s, time to first
token, queue depth, GPU memory), then errors, rate limits, per-worker load and the KV cache.
The live monitoring test runs every query here against a real Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Grafana fills this in from the scrape interval and the panel's resolution.
RATE = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioning/datasources/prometheus.yaml
UID = "llm-gateway"
_HEIGHT = 8


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str
    # Counters that stay absent until something goes wrong (an error kind, a rejection): the
    # panel shows 0 instead of "No data", which would read like a broken dashboard.
    zero_when_absent: bool = False

    @property
    def rendered(self) -> str:
        return f"({self.expr}) or on() vector(0)" if self.zero_when_absent else self.expr


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    max: float | None = None
    red_above: float | None = None  # draw this value as a red threshold line
    width: int = 12  # out of Grafana's 24 columns


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


def _rate(metric: str, by: str = "model") -> str:
    return f"sum by ({by}) (rate({metric}[{RATE}]))"


def _quantile(q: float, histogram: str, by: str = "model") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket[{RATE}])))"


def _ratio_5xx() -> str:
    # Models without any 5xx get 0 (their request rate times 0) rather than no series.
    five_xx = f'sum by (model) (rate(gateway_requests_total{{status=~"5.."}}[{RATE}]))'
    every = _rate("gateway_requests_total")
    return f"({five_xx} or {every} * 0) / {every}"


FOUR_SIGNALS = Row(
    "The four signals",
    (
        Panel(
            "Tokens per second",
            "Throughput. Gateway: tokens of answered requests as the workers reported them. "
            "vLLM: tokens each engine prefilled and generated.",
            "suffix: tok/s",
            (
                Query(_rate("gateway_completion_tokens_total"), "{{model}} completion"),
                Query(_rate("gateway_prompt_tokens_total"), "{{model}} prompt"),
                Query(_rate("vllm:generation_tokens_total"), "{{model}} generated (vLLM)"),
                Query(_rate("vllm:prompt_tokens_total"), "{{model}} prefilled (vLLM)"),
            ),
        ),
        Panel(
            "Time to first token",
            "Latency of streams. Gateway: from the request's arrival to the first event sent "
            "(includes queueing); vLLM: inside the engine.",
            "s",
            (
                Query(_quantile(0.5, "gateway_time_to_first_token_seconds"), "{{model}} p50"),
                Query(_quantile(0.99, "gateway_time_to_first_token_seconds"), "{{model}} p99"),
                Query(_quantile(0.5, "vllm:time_to_first_token_seconds"), "{{model}} p50 (vLLM)"),
                Query(_quantile(0.99, "vllm:time_to_first_token_seconds"), "{{model}} p99 (vLLM)"),
            ),
        ),
        Panel(
            "Queue depth",
            "Capacity. Requests waiting in the gateway's admission queue for a free worker, "
            "and requests waiting inside vLLM for a place in the running batch.",
            "short",
            (
                Query("sum by (model) (gateway_queue_depth)", "{{model}} gateway queue"),
                Query("sum by (model) (vllm:num_requests_waiting)", "{{model}} waiting in vLLM"),
            ),
        ),
        Panel(
            "GPU memory used",
            "Headroom. Share of each GPU's memory in use (DCGM exporter). vLLM reserves "
            "--gpu-memory-utilization (0.9) at start; above 95% risks out-of-memory.",
            "percentunit",
            (
                Query(
                    "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
                    "{{Hostname}} GPU {{gpu}}",
                ),
            ),
            max=1,
            red_above=0.95,
        ),
    ),
)

ERRORS = Row(
    "Errors",
    (
        Panel(
            "Requests per second by status",
            "Every answer of the gateway; 499 means the client went away.",
            "reqps",
            (Query(_rate("gateway_requests_total", "model, status"), "{{model}} {{status}}"),),
            width=8,
        ),
        Panel(
            "5xx ratio",
            "Share of requests answered with a server error (alert: GatewayErrorRatioHigh).",
            "percentunit",
            (Query(_ratio_5xx(), "{{model}}"),),
            red_above=0.05,
            width=8,
        ),
        Panel(
            "Upstream errors and retries",
            "Failed exchanges with workers by kind, requests retried on another worker, and "
            "requests the admission queue refused (503).",
            "reqps",
            (
                Query(
                    _rate("gateway_upstream_errors_total", "model, kind"),
                    "{{model}} {{kind}}",
                    zero_when_absent=True,
                ),
                Query(
                    _rate("gateway_upstream_retries_total"),
                    "{{model}} retried",
                    zero_when_absent=True,
                ),
                Query(
                    _rate("gateway_queue_rejections_total", "model, reason"),
                    "{{model}} refused: {{reason}}",
                    zero_when_absent=True,
                ),
            ),
            width=8,
        ),
    ),
)

RATE_LIMITS = Row(
    "Rate limits",
    (
        Panel(
            "Rate-limit rejections (429)",
            "Requests refused by key name and by the limit that refused them "
            "(rpm, tpm, concurrency).",
            "reqps",
            (
                Query(
                    _rate("gateway_ratelimit_rejections_total", "key, limit"),
                    "{{key}}: {{limit}}",
                    zero_when_absent=True,
                ),
            ),
            width=8,
        ),
        Panel(
            "Tokens per key",
            "Prompt and completion tokens by key name and model, as the workers reported them "
            "(the ten busiest of each). GET /v1/usage gives a key its own totals.",
            "suffix: tok/s",
            (
                Query(
                    f"topk(10, {_rate('gateway_key_prompt_tokens_total', 'key, model')})",
                    "{{key}} {{model}} prompt",
                ),
                Query(
                    f"topk(10, {_rate('gateway_key_completion_tokens_total', 'key, model')})",
                    "{{key}} {{model}} completion",
                ),
            ),
            width=8,
        ),
        Panel(
            "Redis",
            "Redis errors (alert: GatewayRedisErrors); 1 while limits run without Redis "
            "(alert: GatewayRateLimiterDegraded); streams settled without a usage report.",
            "short",
            (
                Query("sum(rate(gateway_redis_errors_total[$__rate_interval]))", "errors/s"),
                Query("max(gateway_ratelimit_degraded)", "degraded"),
                Query(
                    "sum(rate(gateway_usage_missing_total[$__rate_interval]))",
                    "settled without usage/s",
                ),
            ),
            width=8,
        ),
    ),
)

WORKERS = Row(
    "Workers",
    (
        Panel(
            "Requests in flight per worker",
            "Gateway: requests it has in flight on each worker. vLLM: requests in the "
            "worker's running batch.",
            "short",
            (
                Query("sum by (model, worker) (gateway_worker_inflight)", "{{worker}} gateway"),
                Query("sum by (model, worker) (vllm:num_requests_running)", "{{worker}} running"),
            ),
            width=8,
        ),
        Panel(
            "Worker saturation",
            "From the worker's own metrics: max(waiting / 5, KV cache / 0.8); 1 is full.",
            "percentunit",
            (Query("max by (model, worker) (gateway_worker_saturation)", "{{worker}}"),),
            red_above=1,
            width=8,
        ),
        Panel(
            "Worker health",
            "1 while the gateway routes to the worker (alert: GatewayWorkerUnhealthy) and "
            "while Prometheus can scrape it (alert: VLLMWorkerDown); ejections after "
            "consecutive failures.",
            "short",
            (
                Query("max by (model, worker) (gateway_worker_healthy)", "{{worker}} healthy"),
                Query('max by (model, worker) (up{job="vllm"})', "{{worker}} scraped"),
                Query(
                    f"sum by (model, worker) (increase(gateway_worker_ejections_total[{RATE}]))",
                    "{{worker}} ejections",
                    zero_when_absent=True,
                ),
            ),
            width=8,
        ),
    ),
)

KV_CACHE = Row(
    "KV cache",
    (
        Panel(
            "KV-cache usage per worker",
            "Share of the worker's KV-cache blocks in use. Near 1, vLLM queues new requests "
            "and preempts running ones.",
            "percentunit",
            (Query("max by (model, worker) (vllm:kv_cache_usage_perc)", "{{worker}}"),),
            max=1,
            red_above=0.9,
        ),
        Panel(
            "Preemptions",
            "Requests vLLM paused to free KV cache; sustained preemptions mean too little KV "
            "cache for the load.",
            "short",
            (Query(_rate("vllm:num_preemptions_total", "model, worker"), "{{worker}}"),),
        ),
    ),
)

LATENCY = Row(
    "Latency details",
    (
        Panel(
            "Request duration",
            "From arrival to the last byte of the answer, by endpoint.",
            "s",
            (
                Query(
                    _quantile(0.5, "gateway_request_duration_seconds", "model, endpoint"),
                    "{{model}} {{endpoint}} p50",
                ),
                Query(
                    _quantile(0.99, "gateway_request_duration_seconds", "model, endpoint"),
                    "{{model}} {{endpoint}} p99",
                ),
            ),
            width=6,
        ),
        Panel(
            "Inter-token latency",
            "Streams: mean gap between events of one response (gateway), between tokens (vLLM).",
            "s",
            (
                Query(_quantile(0.5, "gateway_inter_token_latency_seconds"), "{{model}} p50"),
                Query(_quantile(0.99, "gateway_inter_token_latency_seconds"), "{{model}} p99"),
                Query(_quantile(0.99, "vllm:inter_token_latency_seconds"), "{{model}} p99 (vLLM)"),
            ),
            width=6,
        ),
        Panel(
            "Queue wait",
            "Time requests spent in the gateway's admission queue.",
            "s",
            (Query(_quantile(0.99, "gateway_queue_wait_seconds"), "{{model}} p99"),),
            width=6,
        ),
        Panel(
            "Gateway overhead",
            "Time the gateway itself added to a request: duration minus queue wait minus "
            "time waiting on the worker.",
            "s",
            (
                Query(
                    _quantile(0.99, "gateway_overhead_seconds", "model, endpoint"),
                    "{{model}} {{endpoint}} p99",
                ),
            ),
            width=6,
        ),
    ),
)


def _ratio(part: str, whole: str) -> str:
    return f"{_rate(part)} / {_rate(whole)}"


ROUTING = Row(
    "Cache-aware routing",
    (
        Panel(
            "Prefix-cache hit rate: predicted and real",
            "Predicted: the share of prompt blocks the gateway's prefix index expected the chosen "
            "worker's KV cache to hold. vLLM: the share of prompt tokens its prefix cache served. "
            "Far apart: the index is off (cache size, bytes per token); see README.",
            "percentunit",
            (
                Query(
                    _ratio(
                        "gateway_prefix_cached_blocks_total", "gateway_prefix_prompt_blocks_total"
                    ),
                    "{{model}} predicted",
                ),
                Query(
                    _ratio("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"),
                    "{{model}} vLLM",
                ),
            ),
            max=1,
        ),
        Panel(
            "Worker choices by reason",
            "Why each request went where it went: cache (the prefix index's best match), fallback "
            "(a match overruled by load), load, session, length, only (one worker), retry.",
            "reqps",
            (
                Query(
                    _rate("gateway_routing_decisions_total", "model, reason"),
                    "{{model}} {{reason}}",
                ),
            ),
        ),
    ),
)


BUDGETS = Row(
    "Budgets and priority",
    (
        Panel(
            "Budget used",
            "Share of each key's token budget charged this UTC day and month (in-flight "
            "reservations included), as of its last admitted request; at 1 the key gets 429 "
            "insufficient_quota until the period resets.",
            "percentunit",
            (Query("max by (key, period) (gateway_key_budget_used_ratio)", "{{key}} {{period}}"),),
            max=1,
            red_above=0.9,
            width=12,
        ),
        Panel(
            "Requests per key",
            "Requests by key name that passed its limits (the ten busiest).",
            "reqps",
            (Query(f"topk(10, {_rate('gateway_key_requests_total', 'key')})", "{{key}}"),),
            width=12,
        ),
    ),
)

ROWS: tuple[Row, ...] = (
    FOUR_SIGNALS,
    ERRORS,
    RATE_LIMITS,
    WORKERS,
    KV_CACHE,
    LATENCY,
    ROUTING,
    BUDGETS,
)


def queries() -> list[Query]:
    return [query for row in ROWS for panel in row.panels for query in panel.queries]


def for_prometheus(expr: str, window: str) -> str:
    """`expr` as Prometheus itself takes it: Grafana's rate interval replaced by `window`."""
    return expr.replace(RATE, window)


def _field_config(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if panel.red_above is not None:
        steps.append({"color": "red", "value": panel.red_above})
    defaults: dict[str, Any] = {
        "unit": panel.unit,
        "min": 0,
        "thresholds": {"mode": "absolute", "steps": steps},
        "custom": {"thresholdsStyle": {"mode": "line" if panel.red_above is not None else "off"}},
    }
    if panel.max is not None:
        defaults["max"] = panel.max
    return {"defaults": defaults, "overrides": []}


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {"refId": chr(ord("A") + i), "expr": q.rendered, "legendFormat": q.legend}
        for i, q in enumerate(panel.queries)
    ]
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": _HEIGHT, "w": panel.width, "x": x, "y": y},
        "fieldConfig": _field_config(panel),
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [{"datasource": DATASOURCE, **target} for target in targets],
    }


def _layout() -> list[dict[str, Any]]:
    """Each row's header, then its panels left to right, wrapping at 24 columns."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row in ROWS:
        panels.append(
            {
                "id": len(panels) + 1,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y, x = y + 1, 0
        for panel in row.panels:
            if x + panel.width > 24:
                y, x = y + _HEIGHT, 0
            panels.append(_panel(panel, len(panels) + 1, x, y))
            x += panel.width
        y += _HEIGHT
    return panels


def dashboard_document() -> dict[str, Any]:
    return {
        "uid": UID,
        "title": "LLM gateway",
        "description": (
            "GENERATED from workers/dashboard.py: do not edit by hand; re-render with "
            "python -m workers render (or: make compose)."
        ),
        "tags": ["llm-gateway"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": _layout(),
    }
