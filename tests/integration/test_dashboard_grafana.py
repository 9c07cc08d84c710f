"""The Grafana dashboard (deploy/grafana/dashboards/gateway.json, rendered from
workers/dashboard.py): the four signals first, every expression valid PromQL, a sane layout,
and provisioning that finds it and its data source. Whether each expression returns data is
tests/e2e/test_monitoring_live.py's job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.prometheus_server import promtool
from workers.dashboard import ROWS, for_prometheus, queries
from workers.render import DASHBOARD_FILE

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / DASHBOARD_FILE).read_text())
    return document


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each expression as a recording rule; it names the rule of any that fails.
    exprs = [for_prometheus(t["expr"], "1m") for p in _panels() for t in p["targets"]]
    assert len(exprs) == len(queries())
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    result = promtool("check", "rules", tmp_path / "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_expression_is_caught(tmp_path: Path) -> None:
    rules = [{"record": "dashboard:broken", "expr": "sum by (model (rate(x[1m]))"}]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    assert promtool("check", "rules", tmp_path / "rules.yml").returncode != 0


def test_the_four_signals_come_first() -> None:
    first_row, *_ = _dashboard()["panels"]
    assert first_row["type"] == "row"
    assert first_row["title"] == "The four signals"
    four = _panels()[:4]
    assert [p["title"] for p in four] == [
        "Tokens per second", "Time to first token", "Queue depth", "GPU memory used",
    ]  # fmt: skip
    exprs = [" ".join(t["expr"] for t in p["targets"]) for p in four]
    assert "gateway_completion_tokens_total" in exprs[0]
    assert "vllm:generation_tokens_total" in exprs[0]
    assert "gateway_time_to_first_token_seconds_bucket" in exprs[1]
    assert "vllm:time_to_first_token_seconds_bucket" in exprs[1]
    assert "gateway_queue_depth" in exprs[2]
    assert "vllm:num_requests_waiting" in exprs[2]
    assert "DCGM_FI_DEV_FB_USED" in exprs[3]
    assert "DCGM_FI_DEV_FB_FREE" in exprs[3]


def test_rows_follow_the_issue_order() -> None:
    assert [row.title for row in ROWS] == [
        "The four signals", "Errors", "Rate limits", "Workers", "KV cache", "Latency details",
        "Cache-aware routing",
        "Budgets and priority",
    ]  # fmt: skip


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
    ids = [panel["id"] for panel in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_uses_the_provisioned_data_source() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    )
    (source,) = provisioned["datasources"]
    for panel in _panels():
        assert panel["datasource"] == {"type": source["type"], "uid": source["uid"]}
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]


def test_grafana_loads_the_dashboard_from_where_compose_mounts_it() -> None:
    compose = yaml.safe_load((ROOT / "compose.gpu.yml").read_text())
    mounts = dict(
        v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"] if v.startswith("./")
    )
    provider = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text()
    )
    (entry,) = provider["providers"]
    assert mounts["./deploy/grafana/dashboards"] == entry["options"]["path"]
    assert (ROOT / "deploy" / "grafana" / "dashboards" / DASHBOARD_FILE.name).exists()
