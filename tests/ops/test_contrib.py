"""``contrib/``: the Grafana dashboard and the Prometheus alerting rules name only metrics the
agent exports, and parse. ``promtool`` (Debian's ``prometheus``; scripts/install-system-deps.sh)
checks the rules, runs their unit tests (``alerts.test.yml``) and parses every dashboard query;
without it a schema check of the YAML stands in (PyYAML, when installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from edge_agent.metrics import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "contrib" / "grafana" / "edge-agent.json"
ALERTS = ROOT / "contrib" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "contrib" / "prometheus" / "alerts.test.yml"
PROMTOOL = shutil.which("promtool")
METRIC = re.compile(r"\b((?:edge_agent|process|python)_[a-z0-9_]*[a-z0-9])\b")
NOT_OURS = {"up"}  # Prometheus' own scrape series, named by EdgeAgentDown


def exported() -> set[str]:
    """Every series name the agent's registry exposes (histograms with their suffixes)."""
    names: set[str] = set()
    for line in generate_latest(REGISTRY).decode().splitlines():
        m = re.fullmatch(r"# TYPE (\S+) (\w+)", line)
        if not m:
            continue
        name, kind = m.groups()
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        assert panel.get("targets"), f"panel {panel.get('title')!r} has no query"
        for target in panel["targets"]:
            out.append((panel["title"], target["expr"]))
    return out


def test_dashboard_is_json_and_queries_only_exported_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "edge-agent" and dash["title"]
    have = exported()
    titles = {p["title"] for p in dash["panels"]}
    for wanted in (
        "Rooms up",
        "Outbox depth by sink",
        "Delivery latency p50 / p99",
        "Device errors by kind",
        "Dead letters and overflow",
        "Store health",
    ):
        assert wanted in titles
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for title, expr in dashboard_exprs():
        names = set(METRIC.findall(expr))
        assert names, f"{title}: {expr!r} names no agent metric"
        assert names <= have, f"{title}: {sorted(names - have)} not exported"


def test_a_panel_naming_an_unknown_metric_would_be_caught() -> None:
    assert not {"edge_agent_rooms_up"} <= exported()


def test_alerts_name_only_exported_metrics() -> None:
    text = ALERTS.read_text()
    exprs = re.findall(
        r"^\s+expr: (?:>-\n)?(.+?)(?=^\s+(?:for|labels):)", text, re.MULTILINE | re.DOTALL
    )
    assert len(exprs) >= 7
    have = exported()
    for expr in exprs:
        names = set(METRIC.findall(expr))
        words = set(re.findall(r"\b([a-z_]+)\{", expr))
        assert names or words & NOT_OURS, expr
        assert names <= have, f"{sorted(names - have)} not exported"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed")
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert PROMTOOL is not None
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(ALERTS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        [PROMTOOL, "test", "rules", ALERT_TESTS.name],
        cwd=ALERT_TESTS.parent,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian's prometheus) is not installed")
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = tmp_path / "dashboard-queries.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(dashboard_exprs()):
        promql = expr.replace("$instance", ".*").replace("$job", ".*")
        lines += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(promql)}"]
    rules.write_text("\n".join(lines) + "\n")
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr

    broken = tmp_path / "broken.yml"
    broken.write_text(rules.read_text().replace("sum(", "sum((", 1))
    bad = subprocess.run(
        [PROMTOOL, "check", "rules", str(broken)], check=False, capture_output=True, timeout=60
    )
    assert bad.returncode != 0  # the check can fail


def test_alerts_schema() -> None:
    yaml = pytest.importorskip("yaml")
    doc: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    assert set(doc) == {"groups"}
    names = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert isinstance(rule["alert"], str) and isinstance(rule["expr"], str)
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert {"summary", "description"} <= set(rule["annotations"])
            names.append(rule["alert"])
    assert {
        "EdgeAgentRoomDown",
        "EdgeAgentOutboxGrowing",
        "EdgeAgentSinkGone",
        "EdgeAgentDeadLetters",
        "EdgeAgentStoreUnhealthy",
    } <= set(names)
    room_down = next(
        r for g in doc["groups"] for r in g["rules"] if r["alert"] == "EdgeAgentRoomDown"
    )
    assert room_down["for"] == "15m"
