"""Per-model and per-worker series exist at zero from the start, not from their first event."""

from __future__ import annotations

from gateway.observe.metrics import Metrics


def test_every_model_and_worker_series_exists_before_any_traffic() -> None:
    metrics = Metrics()
    metrics.prepare({"m": ["w0", "w1"]}, ["/v1/chat/completions"])
    text = metrics.render()[0].decode()
    for series in (
        'gateway_time_to_first_token_seconds_count{model="m"} 0.0',
        'gateway_inter_token_latency_seconds_count{model="m"} 0.0',
        'gateway_prompt_tokens_total{model="m"} 0.0',
        'gateway_completion_tokens_total{model="m"} 0.0',
        'gateway_upstream_retries_total{model="m"} 0.0',
        'gateway_queue_rejections_total{model="m",reason="full"} 0.0',
        'gateway_worker_ejections_total{model="m",worker="w1"} 0.0',
        'gateway_upstream_errors_total{kind="unreachable",model="m",worker="w0"} 0.0',
        'gateway_overhead_seconds_count{endpoint="/v1/chat/completions",model="m"} 0.0',
    ):
        assert series in text, series
