"""Worker health without sockets: reading vLLM's load from its metrics text, the ejection
backoff, and passive ejection after consecutive failures."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config.models import parse_models_config
from gateway.observe.metrics import Metrics
from gateway.routing.ejections import Backoff, LocalEjections
from gateway.routing.health import Health, HealthSettings
from gateway.routing.probe import Verdict
from gateway.routing.registry import Registry, Worker
from gateway.routing.scrape import saturation_from_metrics

VLLM_METRICS = """\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
vllm:num_requests_running{engine="0",model_name="m"} 7.0
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.4
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.2
vllm:num_requests_waiting_by_reason{engine="0",reason="x"} 50.0
"""


def test_saturation_is_the_worse_of_queue_and_kv_cache() -> None:
    assert saturation_from_metrics(VLLM_METRICS) == pytest.approx(0.6)  # 3 waiting / 5
    full_cache = VLLM_METRICS.replace("} 0.4", "} 0.96")
    assert saturation_from_metrics(full_cache) == pytest.approx(1.2)  # 0.96 / 0.8


def test_metrics_without_the_gauges_give_no_saturation() -> None:
    assert saturation_from_metrics("# nothing here\nprocess_cpu_seconds_total 3\n") is None
    assert saturation_from_metrics('vllm:kv_cache_usage_perc{a="b"} garbage\n') == 0.0


async def test_ejection_doubles_on_repeat_up_to_the_cap_and_is_forgotten_later() -> None:
    ejections = LocalEjections(Backoff(base=0.01, max=0.03, reset=0.05))
    assert await ejections.eject("m/w") == pytest.approx(0.01)
    assert await ejections.eject("m/w") <= 0.01  # still ejected: the same window, no strike
    await asyncio.sleep(0.012)
    assert await ejections.eject("m/w") == pytest.approx(0.02)
    await asyncio.sleep(0.022)
    assert await ejections.eject("m/w") == pytest.approx(0.03)  # capped
    await asyncio.sleep(0.09)  # longer than the window plus the reset time
    assert await ejections.eject("m/w") == pytest.approx(0.01)
    assert (await ejections.remaining(["m/w", "m/other"]))[1] == 0


class NoProbe:
    async def fetch(self, url: str, seconds: float) -> bytes | None:
        raise AssertionError("no probes in this test")

    async def check(self, url: str, seconds: float) -> Verdict:
        raise AssertionError("no probes in this test")


class ScriptedProbe:
    """/health answers as scripted, one verdict per probe; no /metrics."""

    def __init__(self, verdicts: list[Verdict]) -> None:
        self.verdicts = verdicts

    async def fetch(self, url: str, seconds: float) -> bytes | None:
        return None

    async def check(self, url: str, seconds: float) -> Verdict:
        return self.verdicts.pop(0)


def health_for(
    eject_after: int, probe: NoProbe | ScriptedProbe | None = None, interval: float = 0
) -> tuple[Health, Worker, Metrics]:
    config = parse_models_config(
        "models:\n  - {name: m, model: x, workers: [{name: w0, url: 'http://h:1'}]}\n"
    )
    registry = Registry(config, "http://127.0.0.1:{port}", 8)
    metrics = Metrics()
    health = Health(
        registry,
        probe or NoProbe(),
        LocalEjections(Backoff(5.0, 60.0, 120.0)),
        HealthSettings(interval=interval, timeout=1.0, eject_after=eject_after, slow_probes=3),
        metrics,
        lambda route: None,
    )
    return health, registry.workers()[0], metrics


async def test_a_worker_is_out_after_three_slow_probes_in_a_row_or_one_refusal() -> None:
    up, slow, down = Verdict.UP, Verdict.SLOW, Verdict.DOWN
    probe = ScriptedProbe([up, slow, slow, up, slow, slow, slow, up, down])
    health, worker, _ = health_for(eject_after=3, probe=probe, interval=1.0)
    seen = []
    for _ in range(9):
        await health.start()  # one probe round (its background loop is cancelled below)
        seen.append(worker.up)
    await health.aclose()
    # Two late answers in a row are a busy host; the third takes it out; one refusal does.
    assert seen == [True, True, True, True, True, True, False, True, False]


async def test_consecutive_failures_eject_and_a_success_resets_the_count() -> None:
    health, worker, metrics = health_for(eject_after=3)
    now = asyncio.get_running_loop().time
    health.failed(worker, "unreachable")
    health.failed(worker, "unreachable")
    health.succeeded(worker)
    health.failed(worker, "timeout")
    health.failed(worker, "timeout")
    await asyncio.sleep(0)
    assert worker.takes_traffic(now())  # never three in a row
    health.failed(worker, "failed")
    await asyncio.sleep(0.01)
    assert not worker.takes_traffic(now())
    assert worker.ejected_until - now() == pytest.approx(5.0, abs=0.1)
    ejections = metrics.registry.get_sample_value(
        "gateway_worker_ejections_total", {"model": "m", "worker": "w0"}
    )
    assert ejections == 1
    errors = metrics.registry.get_sample_value(
        "gateway_upstream_errors_total", {"model": "m", "worker": "w0", "kind": "timeout"}
    )
    assert errors == 2
    await health.aclose()


async def test_ejection_can_be_switched_off() -> None:
    health, worker, _ = health_for(eject_after=0)
    for _ in range(10):
        health.failed(worker, "unreachable")
    await asyncio.sleep(0.01)
    assert worker.takes_traffic(asyncio.get_running_loop().time())
    await health.aclose()


async def test_a_crash_failing_many_requests_at_once_is_one_ejection() -> None:
    health, worker, metrics = health_for(eject_after=3)
    for _ in range(40):  # every in-flight request fails in the same loop pass
        health.failed(worker, "failed")
    await asyncio.sleep(0.01)
    ejections = metrics.registry.get_sample_value(
        "gateway_worker_ejections_total", {"model": "m", "worker": "w0"}
    )
    assert ejections == 1
    assert worker.failures == 0  # failures while out of rotation are not held against it
    await health.aclose()
