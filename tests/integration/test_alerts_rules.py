"""The alert rules (deploy/prometheus/alerts.yml) and Prometheus' config, checked and unit-tested
with promtool from Debian's prometheus package; every alert has a test that makes it fire and one
where it stays quiet (deploy/prometheus/alerts.test.yml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_server import promtool
from workers.alerts import ALERTS

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts.test.yml"


def _ok(result: Any) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", RULES)
    _ok(result)
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_accepts_the_rendered_config_and_finds_the_rules_beside_it() -> None:
    result = promtool("check", "config", PROMETHEUS_DIR / "prometheus.yml")
    _ok(result)
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    _ok(promtool("test", "rules", RULE_TESTS))


def test_alert_rule_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    # The unit tests can fail: the same tests against rules whose 5xx threshold is raised.
    text = RULES.read_text().replace("> 0.05", "> 0.5")
    assert text != RULES.read_text()
    (tmp_path / "alerts.yml").write_text(text)
    (tmp_path / "alerts.test.yml").write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", tmp_path / "alerts.test.yml")
    assert result.returncode != 0
    assert "GatewayErrorRatioHigh" in result.stdout + result.stderr


def _rule_tests() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULE_TESTS.read_text())
    return [case for test in document["tests"] for case in test["alert_rule_test"]]


@pytest.mark.parametrize("alert", [a.name for a in ALERTS])
def test_each_alert_is_tested_firing_and_quiet(alert: str) -> None:
    cases = [case for case in _rule_tests() if case["alertname"] == alert]
    assert any(case["exp_alerts"] for case in cases), f"no test makes {alert} fire"
    assert any(not case["exp_alerts"] for case in cases), f"no test keeps {alert} quiet"


def test_each_rule_waits_has_a_severity_and_says_what_to_do() -> None:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    assert [rule["alert"] for rule in group["rules"]] == [a.name for a in ALERTS]
    for rule in group["rules"]:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_issue_signals_each_have_an_alert() -> None:
    expressions = " ".join(alert.expr for alert in ALERTS)
    for series in (
        "gateway_queue_depth",
        'gateway_requests_total{status=~"5.."}',
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_worker_healthy",
        'up{job="vllm"}',
        "DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)",
        "gateway_redis_errors_total",
    ):
        assert series in expressions


def test_readme_tells_when_each_alert_fires_and_what_to_do() -> None:
    readme = (ROOT / "README.md").read_text()
    monitoring = readme.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    for alert in ALERTS:
        row = next((line for line in monitoring.splitlines() if f"| `{alert.name}` |" in line), "")
        assert f"| {alert.severity} |" in row, f"README's alert table lacks {alert.name}"
