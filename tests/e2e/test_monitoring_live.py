"""The dashboard and the alerts against a live Prometheus (Debian's package, 1 s scrapes).

Prometheus gets the configuration `python -m workers render` writes (workers/prometheus.py),
with the same alerts.yml, pointed at processes on this machine: a gateway (two processes, as in
compose) in front of the session's real vLLM CPU engines, a fake DCGM exporter (no GPU can exist
here) and, for failures a real engine can't produce on demand, the fake vLLM worker. After real
traffic (plain and streamed answers, a 429, worker errors and retries, a full admission queue),
every dashboard query and every alert condition is run through Prometheus' HTTP API and must
return series with a value.

Alert expressions are `condition > threshold`, which return nothing while not firing; so each
alert is kept in workers/alerts.py as conditions with their comparison apart, and the test
queries every condition without it. The comparisons themselves are unit-tested by promtool
(tests/unit/test_alerts_rules.py); here the rules must evaluate without error, and the alerts
the test's own faults trigger (a dead worker, a failing model, a nearly full GPU) must be
pending in Prometheus.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from gateway.config.keys import hash_key, new_key
from gateway.config.models import ModelConfig, ModelsConfig, WorkerConfig
from tests.e2e.conftest import RealStack
from tests.procs import ROOT, Proc, free_port, start_fake, start_gateway, start_serving
from tests.prometheus_server import PrometheusServer
from workers.alerts import ALERTS
from workers.dashboard import for_prometheus, queries
from workers.prometheus import Scrape, prometheus_document
from workers.render import ALERTS_FILE

pytestmark = pytest.mark.e2e
# Longer than the whole test, so every rate() sees all of its traffic.
WINDOW = "5m"
GPU_USED_MIB = (73_000, 79_000)  # of 81,559: 89.5% (vLLM's usual) and 96.9% (GPUMemoryHigh)
CHAT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say something."}]


@dataclass
class Live:
    prometheus: PrometheusServer
    gateway: str
    models: ModelsConfig
    key: str  # limits far above the traffic
    limited_key: str  # one request a minute
    dead_worker: str  # configured, never started
    failing_model: str  # both workers are the fake, told to answer 503
    queued_model: str  # one request in flight per worker: the rest queue

    def client(self, key: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway + "/v1", api_key=key or self.key, max_retries=0)


def _live_models(attached: ModelsConfig, fake_url: str, dead_url: str) -> ModelsConfig:
    """The engines' models, plus a dead worker for the first, one in flight a worker for the
    second, and a model served only by the fake worker."""
    first, second, *rest = attached.models
    dead = WorkerConfig(name=f"{first.workers[0].name}-dead", url=dead_url)
    failing = ModelConfig(
        name="failing",
        model="fake",
        workers=[WorkerConfig(name=f"failing-{i}", url=fake_url) for i in range(2)],
    )
    return attached.model_copy(
        update={
            "models": [
                first.model_copy(update={"workers": [*first.workers, dead]}),
                second.model_copy(update={"max_inflight_per_worker": 1}),
                *rest,
                failing,
            ]
        }
    )


def _start_dcgm(tmp: Path) -> tuple[Proc, str]:
    port = free_port()
    used = ",".join(map(str, GPU_USED_MIB))
    args = [sys.executable, "-m", "tests.fakes.fake_dcgm", "--port", str(port), "--used-mib", used]
    return start_serving(args, port, tmp / "fake-dcgm.log")


def _start_prometheus(tmp: Path, models: ModelsConfig, gateway: str, dcgm: str) -> PrometheusServer:
    scrape = Scrape(
        gateway=gateway.removeprefix("http://"),
        dcgm=dcgm.removeprefix("http://"),
        rule_files=(str(ROOT / ALERTS_FILE),),
        interval="1s",
    )
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_document(models, scrape), sort_keys=False))
    return PrometheusServer(config, tmp)


@pytest.fixture(scope="module")
def live(
    real: RealStack, tmp_path_factory: pytest.TempPathFactory, module_redis_url: str
) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("monitoring")
    key, limited_key = new_key(), new_key()
    (tmp / "keys.yaml").write_text(
        "keys:\n"
        # A tpm limit and a daily budget far above the traffic: the budget panel has a series.
        f"  - {{name: live, sha256: {hash_key(key)}, tpm: 100000000,"
        " tokens_per_day: 1000000000}\n"
        f"  - {{name: live-limited, sha256: {hash_key(limited_key)}, rpm: 1}}\n"
    )
    procs: list[Proc] = []
    prometheus = None
    try:
        fake, fake_url = start_fake(tmp, "failing")
        procs.append(fake)
        httpx.post(fake_url + "/fake/control", json={"status": 503}, timeout=5)
        dcgm, dcgm_url = _start_dcgm(tmp)
        procs.append(dcgm)
        models = _live_models(
            real.engines.attached_config(), fake_url, f"http://127.0.0.1:{free_port()}"
        )
        env = {
            "GATEWAY_AUTH_ENABLED": "true",
            "GATEWAY_KEYS_FILE": str(tmp / "keys.yaml"),
            "GATEWAY_REDIS_URL": module_redis_url,
            "GATEWAY_PROCESSES": "2",  # prometheus-client's multi-process mode, as in compose
            "GATEWAY_QUEUE_DEPTH": "1",
        }
        text = yaml.safe_dump(models.model_dump(mode="json", exclude_none=True))
        gateway, url = start_gateway(tmp, text, env)
        procs.append(gateway)
        prometheus = _start_prometheus(tmp, models, url, dcgm_url)
        yield Live(
            prometheus,
            url,
            models,
            key,
            limited_key,
            dead_worker=models.models[0].workers[-1].name,
            failing_model="failing",
            queued_model=models.models[1].name,
        )
    finally:
        if prometheus is not None:
            prometheus.stop()
        for proc in reversed(procs):
            proc.stop()


def _every_target_scraped(live: Live) -> bool:
    up = [t for t in live.prometheus.targets() if t["health"] == "up"]
    # The gateway, the DCGM exporter and every worker but the dead one.
    return len(up) == 2 + sum(len(m.workers) for m in live.models.models) - 1


# Long enough to span several prefix blocks (cache-aware routing) and a vLLM cache block, so
# the prefix-cache panels have samples: sent twice, the second finds it cached.
LONG_CHAT: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You answer in one word. " + "Context sentence. " * 200},
    {"role": "user", "content": "Say something."},
]


def _send_requests(live: Live) -> None:
    client = live.client()
    for _ in range(2):  # the first model has two workers: cache-aware routing applies
        client.chat.completions.create(
            model=live.models.models[0].name, messages=LONG_CHAT, max_tokens=4
        )
    for model in (m.name for m in live.models.models[:2]):
        client.chat.completions.create(model=model, messages=CHAT, max_tokens=8)
        client.completions.create(model=model, prompt="Once upon a time", max_tokens=8)
        for _ in range(2):
            stream = client.chat.completions.create(
                model=model, messages=CHAT, max_tokens=16, stream=True
            )
            assert sum(1 for _ in stream) > 1
    # Worker errors: the fake answers 503, the gateway retries on the other worker, then gives
    # up; consecutive failures eject both workers (then: 503 no healthy backend).
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model=live.failing_model, prompt="Hi", max_tokens=2)


def _hit_the_rate_limit(live: Live) -> None:
    limited = live.client(live.limited_key)  # one request a minute
    with pytest.raises(openai.RateLimitError):  # the second or third is refused
        for _ in range(3):
            limited.completions.create(model=live.queued_model, prompt="Hi", max_tokens=2)


def _fill_the_queue(live: Live) -> None:
    """Two gateway processes, each with one request in flight on the worker and one place in
    the queue: 24 at once, each generating 256 tokens (a few hundred ms here), leave some
    refused (503 server_overloaded) however the kernel spreads them over the processes."""

    def one(_: int) -> int:
        try:
            live.client().completions.create(
                model=live.queued_model,
                prompt="Once upon a time",
                max_tokens=256,
                extra_body={"ignore_eos": True},
            )
        except openai.APIStatusError as exc:
            return exc.status_code
        return 200

    with ThreadPoolExecutor(24) as pool:
        statuses = list(pool.map(one, range(24)))
    assert 200 in statuses
    assert 503 in statuses, statuses


def _wait_for_a_scrape(live: Live) -> None:
    """Until every target has been scraped after this moment (timestamp(up): its last scrape)."""
    now = time.time()

    def scraped() -> bool:
        oldest = live.prometheus.query("min(timestamp(up))")
        return bool(oldest) and float(oldest[0]["value"][1]) > now + 0.5

    live.prometheus.wait_until("a scrape of every target", scraped)


@pytest.fixture(scope="module")
def traffic(live: Live) -> Live:
    live.prometheus.wait_until("every target up", lambda: _every_target_scraped(live))
    # Twice, with a scrape between: a labelled series appears with its first sample, so rate()
    # only sees what is added after that sample (a single burst would read as a rate of 0).
    for _ in range(2):
        _send_requests(live)
        _hit_the_rate_limit(live)
        _fill_the_queue(live)
        _wait_for_a_scrape(live)
    return live


def _finite(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [series for series in result if math.isfinite(float(series["value"][1]))]


def _check(live: Live, expr: str) -> str | None:
    result = live.prometheus.query(expr)
    if not result:
        return f"no series: {expr}"
    if not _finite(result):
        return f"no series with a value (all NaN/Inf): {expr}"
    return None


def test_every_dashboard_query_returns_series(traffic: Live) -> None:
    problems = []
    for query in queries():
        # The query as written, and for a panel that shows 0 when its counter is absent, the
        # counter itself: the traffic above makes every one of them exist.
        for expr in dict.fromkeys((query.expr, query.rendered)):
            problem = _check(traffic, for_prometheus(expr, WINDOW))
            if problem:
                problems.append(problem)
    assert not problems, "\n".join(problems)


def test_every_alert_condition_returns_series(traffic: Live) -> None:
    problems = []
    for alert in ALERTS:
        for condition in alert.when:
            problem = _check(traffic, condition.series)
            if problem:
                problems.append(f"{alert.name}: {problem}")
    assert not problems, "\n".join(problems)


def test_alert_rules_evaluate_without_error(traffic: Live) -> None:
    def loaded() -> list[dict[str, Any]]:
        groups = traffic.prometheus.api("rules", type="alert")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    traffic.prometheus.wait_until(
        "every rule evaluated",
        lambda: all(r.get("lastEvaluation", "0001").startswith("20") for r in loaded()),
    )
    rules = loaded()
    assert [rule["name"] for rule in rules] == [alert.name for alert in ALERTS]
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken


def test_the_faults_make_their_alerts_pending(traffic: Live) -> None:
    expected = {
        ("VLLMWorkerDown", "worker", traffic.dead_worker),
        ("GatewayWorkerUnhealthy", "worker", traffic.dead_worker),
        ("GatewayErrorRatioHigh", "model", traffic.failing_model),
        ("GPUMemoryHigh", "gpu", "1"),
    }

    def active() -> set[tuple[str, str, str]]:
        alerts = traffic.prometheus.api("alerts")["alerts"]
        return {
            (a["labels"]["alertname"], label, a["labels"].get(label, ""))
            for a in alerts
            for label in ("worker", "model", "gpu")
        }

    traffic.prometheus.wait_until("the expected alerts", lambda: expected <= active())
    assert ("GPUMemoryHigh", "gpu", "0") not in active()  # 89.5%: vLLM's usual reservation
    assert not any(name == "GatewayDown" for name, _, _ in active())
