"""soakd's Prometheus files: promtool checks, rule unit tests, and catalogue-only expressions.

The promtool tests need the real Prometheus tools (`apt-get install prometheus` on Debian,
`brew install prometheus` on a Mac) and are skipped, saying so, only when promtool is absent.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from promql_lint import analyze, catalogue_series, recorded_series
from queries import ALERT_RULES, RECORDING_RULES, REPO, alert_rules, panel_queries, recording_rules

PROMETHEUS_DIR = REPO / "grafana" / "prometheus"
CONFIGS = [PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus-fleet.yml"]
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool")

requires_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian: apt-get install prometheus; "
           "macOS: brew install prometheus)")

# What the issue asks the alerts to cover, by alert name.
REQUIRED_ALERTS = {
    "SoakdThroughputBelowWarmBaseline": "soakd_sustained_ratio",
    "SoakdThermalPressureHeavy": "soakd_thermal_pressure_level",
    "SoakdNumericMismatch": "soakd_numeric_mismatches_total",
    "SoakdTelemetrySourceDown": "soakd_source_up",
    "SoakdDaemonDown": 'up{job="soakd"}',
    "SoakdDaemonAbsent": 'absent(up{job="soakd"})',
    "SoakdDeviceOutlier": "soakd_device_outlier",
}


def promtool(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_definitions() -> list[dict[str, Any]]:
    return [rule for group in load(ALERT_RULES)["groups"] for rule in group["rules"]]


# --- promtool -----------------------------------------------------------------------------


@requires_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RECORDING_RULES, ALERT_RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@requires_promtool
def test_promtool_rule_unit_tests() -> None:
    assert RULE_TESTS, "no promtool unit tests in grafana/prometheus/tests"
    result = promtool("test", "rules", *(p.name for p in RULE_TESTS), cwd=RULE_TESTS[0].parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


@requires_promtool
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_promtool_check_config(config: Path) -> None:
    result = promtool("check", "config", config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout


@requires_promtool
def test_every_dashboard_query_parses_in_prometheus(tmp_path: Path) -> None:
    """Each panel query, variables substituted, is valid PromQL for the installed Prometheus."""
    rules = [{"record": f"soakd_dashboard_check:query{i}", "expr": expr}
             for i, (_, _, expr) in enumerate(panel_queries())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


@requires_promtool
def test_a_broken_rule_file_fails_promtool(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("groups:\n  - name: x\n    rules:\n      - record: a:b:c\n"
                    "        expr: sum by (phase (soakd_flop_total)\n")
    assert promtool("check", "rules", path).returncode != 0


# --- the rules' content -------------------------------------------------------------------


def test_rule_expressions_use_only_catalogue_metrics() -> None:
    series, problems = recorded_series(recording_rules(), catalogue_series())
    assert {record: errors for record, errors in problems.items() if errors} == {}
    for name, expr in alert_rules():
        assert analyze(expr, series).errors == [], name


def test_a_rule_on_a_metric_soakd_does_not_export_is_caught() -> None:
    _, problems = recorded_series(
        [("instance:soakd_gpu_util:avg5m", "avg_over_time(soakd_gpu_utilization[5m])"),
         ("instance:soakd_power:sum", "sum by (instance, phase) (soakd_power_watts)")],
        catalogue_series())
    assert any("soakd_gpu_utilization" in e for e in problems["instance:soakd_gpu_util:avg5m"])
    assert any("'phase'" in e for e in problems["instance:soakd_power:sum"])


def test_recording_rule_names_follow_the_convention() -> None:
    for record, _ in recording_rules():
        level, metric, operations = record.split(":")
        assert level and metric.startswith("soakd_") and operations, record


def test_the_alerts_the_issue_asks_for() -> None:
    expressions = dict(alert_rules())
    for name, needle in REQUIRED_ALERTS.items():
        assert needle in expressions[name], name


def test_every_alert_has_a_runbook_severity_and_summary() -> None:
    for rule in alert_definitions():
        annotations = rule.get("annotations", {})
        runbook = annotations.get("runbook", "")
        assert runbook and "\n" not in runbook.strip(), rule["alert"]
        assert annotations.get("summary"), rule["alert"]
        assert rule.get("labels", {}).get("severity") in ("warning", "critical"), rule["alert"]


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in load(path).get("tests", []):
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_definitions()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested not firing"


def test_single_host_config_scrapes_the_local_daemon() -> None:
    config = load(PROMETHEUS_DIR / "prometheus.yml")
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "soakd"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:10466"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file(), rule_file


def test_fleet_config_uses_file_service_discovery() -> None:
    config = load(PROMETHEUS_DIR / "prometheus-fleet.yml")
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "soakd"]
    patterns = [f for sd in job["file_sd_configs"] for f in sd["files"]]
    assert patterns == ["targets/*.yml"]
    examples = sorted(PROMETHEUS_DIR.glob(patterns[0]))
    assert examples, "no example targets file"
    for example in examples:
        for group in load(example):
            assert group["targets"] and all(":" in t for t in group["targets"])
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file(), rule_file
