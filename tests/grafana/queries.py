"""Every PromQL query of soakd's dashboards and recording rules, ready for a real Prometheus.

    from queries import panel_queries, recording_rules   # with tests/grafana on sys.path

`panel_queries()` reads the committed dashboards (grafana/dashboards/*.json): each panel
target's expression and each Prometheus annotation's expression, with Grafana's template
variables replaced so that Prometheus' HTTP API accepts them:

    $instance, $phase, $backend, $precision (and any other dashboard variable) -> .*
    $__rate_interval -> 1m    $__interval -> 30s    $__range -> 1h

The dashboards match every variable with `=~`, so `.*` selects everything. Only the standard
library and PyYAML (already a dependency through coremltools) are used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "grafana" / "dashboards"
RECORDING_RULES = REPO / "grafana" / "prometheus" / "rules" / "soakd-recording.yml"
ALERT_RULES = REPO / "grafana" / "prometheus" / "rules" / "soakd-alerts.yml"

# Grafana's built-in interval variables, as a dashboard over the last hour would set them.
BUILTIN_INTERVALS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "30000",
}
# A dashboard variable used as a label matcher value (always with =~).
VARIABLE_VALUE = ".*"

# Panels legitimately empty in the live test (tests/grafana/test_live_prometheus.py), with the
# reason; test_panel_queries.py evaluates each of them on constructed series instead.
EMPTY_IN_CI = {
    ("soakd-stability", "Device throughput vs the host's median device"):
        "needs several devices of one backend (the live test's host has one CPU)",
    ("soakd-power-thermal", "Hardware error counts"): "needs NVML (the live test's host has no NVIDIA GPU)",
    ("soakd-power-thermal", "New hardware errors"): "needs NVML (the live test's host has no NVIDIA GPU)",
    ("soakd-power-thermal", "Row remapping"): "needs NVML (the live test's host has no NVIDIA GPU)",
}

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def _name(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group)


def variable_names(expr: str) -> list[str]:
    """The Grafana variables a query uses, in order."""
    return [_name(match) for match in _VARIABLE.finditer(expr)]


def substitute(expr: str) -> str:
    """Replace Grafana variables in a query with values Prometheus accepts."""
    return _VARIABLE.sub(lambda match: BUILTIN_INTERVALS.get(_name(match), VARIABLE_VALUE), expr)


def dashboards() -> dict[str, dict[str, Any]]:
    """File name (without .json) -> parsed dashboard, for every committed dashboard."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def raw_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expression as written in the JSON) for each target and annotation."""
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel["title"], target["expr"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        expr = annotation.get("target", {}).get("expr") or annotation.get("expr")
        if expr:
            yield f"annotation: {annotation['name']}", expr


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expression with variables substituted) for every query."""
    return [(name, title, substitute(expr))
            for name, dashboard in dashboards().items()
            for title, expr in raw_queries(dashboard)]


def panel_targets(dashboard: str, title: str) -> list[str]:
    """The expressions of one panel's targets, in order, variables substituted."""
    for panel in iter_panels(dashboards()[dashboard].get("panels", [])):
        if panel.get("title") == title:
            return [substitute(target["expr"]) for target in panel.get("targets", [])]
    raise KeyError(f"{dashboard}: no panel {title!r}")


def rule_groups(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    groups: list[dict[str, Any]] = data["groups"]
    return groups


def recording_rules() -> list[tuple[str, str]]:
    """(recorded series name, expression) for every recording rule, in file order."""
    return [(rule["record"], rule["expr"].strip())
            for group in rule_groups(RECORDING_RULES)
            for rule in group["rules"] if "record" in rule]


def alert_rules() -> list[tuple[str, str]]:
    """(alert name, expression) for every alerting rule."""
    return [(rule["alert"], rule["expr"].strip())
            for group in rule_groups(ALERT_RULES)
            for rule in group["rules"] if "alert" in rule]


if __name__ == "__main__":
    for dashboard, title, expr in panel_queries():
        print(f"## {dashboard} / {title}\n{expr}\n")
    for record, expr in recording_rules():
        print(f"## rule {record}\n{expr}\n")
