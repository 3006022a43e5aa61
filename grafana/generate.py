#!/usr/bin/env python3
"""Write soakd's Grafana dashboards (grafana/dashboards/*.json) from the definitions below.

    python grafana/generate.py           # rewrite the JSON files
    python grafana/generate.py --check   # exit 1 if a committed file differs from the output

The committed JSON must equal this script's output (tests/grafana/test_dashboards.py checks it).
Only the standard library is used. Every metric and label in a query must exist in
`daemon/metric_catalog.py` or be a recorded series from
`grafana/prometheus/rules/soakd-recording.yml`; the tests check that too.

Template variables ($instance, $phase, $backend, $precision) are always matched with `=~`,
so "All" (a regex) and multi-value selections work; `$__rate_interval` and `$__range` are
Grafana's own interval variables.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

HERE = Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "dashboards"

SCHEMA_VERSION = 39
# The data source provisioned by grafana/provisioning/datasources/soakd.yaml.
DATASOURCE_UID = "soakd-prometheus"
DATASOURCE_NAME = "soakd Prometheus"
DATASOURCE_VAR = "datasource"
DS: JSON = {"type": "prometheus", "uid": "${" + DATASOURCE_VAR + "}"}
GRAFANA_DS: JSON = {"type": "grafana", "uid": "-- Grafana --"}
TAGS = ["soakd"]

# Recorded series (grafana/prometheus/rules/soakd-recording.yml).
FLOP_RATE = "instance_phase_backend_precision:soakd_flop:rate1m"
FLOP_PEAK_1H = "instance_phase_backend_precision:soakd_flop:max1h_rate1m"
STEP_P50 = "instance_phase_backend_precision:soakd_step_duration_seconds:p50_rate1m"
STEP_P99 = "instance_phase_backend_precision:soakd_step_duration_seconds:p99_rate1m"
POWER = "instance_source_component:soakd_energy_joules:rate1m"
SUSTAINED_MIN_1H = "instance_phase_backend_precision:soakd_sustained_ratio:min1h"

# Label filters built from the template variables.
F_INSTANCE = 'instance=~"$instance"'
F_WORKLOAD = 'instance=~"$instance", phase=~"$phase", backend=~"$backend", precision=~"$precision"'
# soakd_fallbacks_total has no precision label (a fallback happens before a precision runs).
F_FALLBACK = 'instance=~"$instance", phase=~"$phase", backend=~"$backend"'
W_LABELS = "instance, phase, backend, precision"

# Grafana's custom unit syntax: SI prefixes in front of the given unit ("12.3 GFLOP/J").
UNIT_FLOP_PER_JOULE = "si:FLOP/J"
UNIT_TIMES = "suffix:×"

# Display names of the ordinal soakd_thermal_pressure_level; the `level` label values are the
# lowercase forms (daemon/levels.py).
THERMAL_LEVELS = ("Nominal", "Light", "Moderate", "Heavy", "Trapping", "Sleeping")
THERMAL_COLOURS = ("green", "yellow", "orange", "red", "dark-red", "purple")


def zero_if_empty(expr: str, label: str | None = None) -> str:
    """Show 0 instead of "No data" when a counter has no series yet (no event ever happened).

    With `label`, the zero row is labelled `<label>="none"` so legends and tables read well.
    """
    zero = "vector(0)" if label is None else f'label_replace(vector(0), "{label}", "none", "", "")'
    return f"({expr}) or on() {zero}"


def mismatches(window: str) -> str:
    """Mismatches per workload in each window: 0, not missing, for every workload checked."""
    return (f"sum by ({W_LABELS}) (increase(soakd_numeric_mismatches_total{{{F_WORKLOAD}}}"
            f"[{window}]))\nor\n"
            f"sum by ({W_LABELS}) (increase(soakd_numeric_checks_total{{{F_WORKLOAD}}}"
            f"[{window}])) * 0")


def mean_throughput(filters: str, by: str) -> str:
    """FLOP done / time spent in measured steps over the dashboard's range: exact mean FLOP/s."""
    return (f"sum by ({by}) (increase(soakd_flop_total{{{filters}}}[$__range]))\n/\n"
            f"sum by ({by}) (increase(soakd_step_duration_seconds_sum{{{filters}}}[$__range]))")


# --- panels -------------------------------------------------------------------------------


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False

    def render(self, ref_id: str) -> JSON:
        out: JSON = {
            "datasource": DS,
            "editorMode": "code",
            "expr": self.expr,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "instant": self.instant,
            "refId": ref_id,
        }
        if self.table:
            out["format"] = "table"
        return out


@dataclass
class Panel:
    kind: str
    title: str
    description: str
    unit: str
    targets: list[Target]
    width: int = 12
    height: int = 8
    options: JSON = field(default_factory=dict)
    defaults: JSON = field(default_factory=dict)
    overrides: list[JSON] = field(default_factory=list)
    transformations: list[JSON] = field(default_factory=list)

    def render(self, panel_id: int, grid: JSON) -> JSON:
        defaults: JSON = {"unit": self.unit, **self.defaults}
        out: JSON = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DS,
            "gridPos": grid,
            "fieldConfig": {"defaults": defaults, "overrides": self.overrides},
            "options": self.options,
            "targets": [t.render(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
        }
        if self.transformations:
            out["transformations"] = self.transformations
        return out


def thresholds(*steps: tuple[float | None, str]) -> JSON:
    return {"mode": "absolute",
            "steps": [{"color": colour, "value": value} for value, colour in steps]}


GREEN = thresholds((None, "green"))
LEGEND_TABLE: JSON = {"displayMode": "table", "placement": "bottom", "showLegend": True,
                      "calcs": ["mean", "min", "max", "lastNotNull"]}
LEGEND_LIST: JSON = {"displayMode": "list", "placement": "bottom", "showLegend": True,
                     "calcs": []}
REDUCE_LAST: JSON = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def timeseries(title: str, description: str, unit: str, *targets: Target, width: int = 12,
               height: int = 8, bars: bool = False, log: bool = False,
               steps: JSON | None = None, overrides: list[JSON] | None = None) -> Panel:
    custom: JSON = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "axisSoftMin": 0,
        "scaleDistribution": {"type": "log", "log": 10} if log else {"type": "linear"},
        "thresholdsStyle": {"mode": "dashed" if steps else "off"},
    }
    defaults: JSON = {"color": {"mode": "palette-classic"}, "custom": custom,
                      "thresholds": steps or GREEN}
    if log:
        del custom["axisSoftMin"]
    options: JSON = {"legend": LEGEND_TABLE, "tooltip": {"mode": "multi", "sort": "desc"}}
    return Panel("timeseries", title, description, unit, list(targets), width, height, options,
                 defaults, overrides or [])


def stat(title: str, description: str, unit: str, target: Target, width: int = 4,
         height: int = 4, steps: JSON | None = None, decimals: int | None = None) -> Panel:
    defaults: JSON = {"color": {"mode": "thresholds"}, "thresholds": steps or GREEN}
    if decimals is not None:
        defaults["decimals"] = decimals
    options: JSON = {"reduceOptions": REDUCE_LAST, "colorMode": "value", "graphMode": "none",
                     "justifyMode": "auto", "orientation": "auto", "textMode": "auto",
                     "showPercentChange": False, "wideLayout": True}
    return Panel("stat", title, description, unit, [target], width, height, options, defaults)


def bargauge(title: str, description: str, unit: str, *targets: Target, width: int = 12,
             height: int = 8, steps: JSON | None = None,
             limits: tuple[float | None, float | None] = (0, None)) -> Panel:
    defaults: JSON = {"color": {"mode": "thresholds"} if steps else {"mode": "palette-classic"},
                      "thresholds": steps or GREEN}
    low, high = limits
    if low is not None:
        defaults["min"] = low
    if high is not None:
        defaults["max"] = high
    options: JSON = {"reduceOptions": REDUCE_LAST, "orientation": "horizontal",
                     "displayMode": "gradient", "valueMode": "color", "namePlacement": "auto",
                     "showUnfilled": True, "sizing": "auto", "minVizHeight": 16,
                     "minVizWidth": 8, "maxVizHeight": 300}
    return Panel("bargauge", title, description, unit, list(targets), width, height, options,
                 defaults)


def value_mappings(names: dict[int, tuple[str, str]]) -> list[JSON]:
    return [{"type": "value", "options": {
        str(value): {"text": text, "color": colour, "index": i}
        for i, (value, (text, colour)) in enumerate(sorted(names.items()))}}]


def state_timeline(title: str, description: str, target: Target, mappings: list[JSON],
                   width: int = 24, height: int = 6) -> Panel:
    defaults: JSON = {"color": {"mode": "thresholds"}, "thresholds": GREEN,
                      "custom": {"fillOpacity": 80, "lineWidth": 0}, "mappings": mappings}
    options: JSON = {"showValue": "never", "mergeValues": True, "alignValue": "left",
                     "rowHeight": 0.9, "legend": LEGEND_LIST,
                     "tooltip": {"mode": "single", "sort": "none"}}
    return Panel("state-timeline", title, description, "none", [target], width, height,
                 options, defaults)


def table(title: str, description: str, unit: str, columns: list[tuple[str, str, Target]],
          width: int = 24, height: int = 8, hide: tuple[str, ...] = ("Time",)) -> Panel:
    """A table joining instant queries on their labels; each column is (name, unit, query)."""
    overrides: list[JSON] = []
    targets: list[Target] = []
    for i, (name, col_unit, target) in enumerate(columns):
        value = f"Value #{chr(ord('A') + i)}" if len(columns) > 1 else "Value"
        overrides.append({"matcher": {"id": "byName", "options": value},
                          "properties": [{"id": "unit", "value": col_unit},
                                         {"id": "displayName", "value": name}]})
        targets.append(Target(target.expr, target.legend, instant=True, table=True))
    transformations: list[JSON] = []
    if len(columns) > 1:
        transformations.append({"id": "merge", "options": {}})
    transformations.append({"id": "organize", "options": {
        "excludeByName": {name: True for name in hide}, "indexByName": {},
        "renameByName": {}}})
    options: JSON = {"showHeader": True, "cellHeight": "sm",
                     "footer": {"show": False, "reducer": ["sum"], "countRows": False,
                                "fields": ""},
                     "sortBy": []}
    defaults: JSON = {"color": {"mode": "thresholds"}, "thresholds": GREEN,
                      "custom": {"align": "auto", "cellOptions": {"type": "auto"},
                                 "inspect": False}}
    return Panel("table", title, description, unit, targets, width, height, options, defaults,
                 overrides, transformations)


# --- dashboards ---------------------------------------------------------------------------


@dataclass
class Row:
    title: str
    repeat: str | None = None


@dataclass
class Dashboard:
    uid: str
    title: str
    description: str
    items: list[Panel | Row]
    time_from: str = "now-6h"
    annotations: list[JSON] = field(default_factory=list)

    def render(self) -> JSON:
        panels: list[JSON] = []
        x = y = line_height = 0
        for number, item in enumerate(self.items, start=1):
            if isinstance(item, Row):
                y += line_height
                x, line_height = 0, 0
                row: JSON = {"id": number, "type": "row", "title": item.title,
                             "collapsed": False, "panels": [],
                             "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}}
                if item.repeat:
                    row["repeat"] = item.repeat
                panels.append(row)
                y += 1
                continue
            if x + item.width > 24:
                y += line_height
                x, line_height = 0, 0
            panels.append(item.render(number, {"h": item.height, "w": item.width, "x": x,
                                               "y": y}))
            x += item.width
            line_height = max(line_height, item.height)
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": TAGS,
            "editable": True,
            "graphTooltip": 1,
            "fiscalYearStartMonth": 0,
            "liveNow": False,
            "refresh": "30s",
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "timezone": "browser",
            "weekStart": "",
            "time": {"from": self.time_from, "to": "now"},
            "timepicker": {},
            "links": [{"type": "dashboards", "title": "soakd", "tags": TAGS, "asDropdown": False,
                       "includeVars": True, "keepTime": True, "targetBlank": False,
                       "icon": "external link", "tooltip": "", "url": ""}],
            "annotations": {"list": [BUILTIN_ANNOTATION, *self.annotations]},
            "templating": {"list": variables()},
            "panels": panels,
        }


BUILTIN_ANNOTATION: JSON = {
    "builtIn": 1, "datasource": GRAFANA_DS, "enable": True, "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
}

PHASE_ANNOTATION: JSON = {
    "datasource": DS,
    "enable": True,
    "hide": False,
    "iconColor": "rgba(255, 152, 48, 0.25)",
    "name": "Rotation phases",
    "target": {
        "expr": f"max by ({W_LABELS}) (soakd_phase_active{{{F_WORKLOAD}}})",
        "interval": "15s",
        "refId": "Anno",
    },
    "titleFormat": "{{phase}} on {{backend}} ({{precision}})",
    "textFormat": "{{instance}}",
    "tagKeys": "phase,backend,precision",
    "useValueForTime": False,
}


def query_variable(name: str, label: str, query: str) -> JSON:
    """A multi-value label_values() variable; "All" is the regex .+ (every value)."""
    return {
        "type": "query",
        "name": name,
        "label": label,
        "datasource": DS,
        "definition": query,
        "query": query,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "skipUrlSync": False,
    }


def variables() -> list[JSON]:
    return [
        {"type": "datasource", "name": DATASOURCE_VAR, "label": "Data source",
         "query": "prometheus", "regex": "", "refresh": 1, "hide": 0, "multi": False,
         "includeAll": False, "skipUrlSync": False, "options": [],
         "current": {"selected": False, "text": DATASOURCE_NAME, "value": DATASOURCE_UID}},
        query_variable("instance", "Host", 'label_values(up{job="soakd"}, instance)'),
        query_variable("phase", "Phase",
                       'label_values(soakd_phase_active{instance=~"$instance"}, phase)'),
        query_variable("backend", "Backend",
                       'label_values(soakd_phase_active{instance=~"$instance", '
                       'phase=~"$phase"}, backend)'),
        query_variable("precision", "Precision",
                       'label_values(soakd_phase_active{instance=~"$instance", '
                       'phase=~"$phase", backend=~"$backend"}, precision)'),
    ]


def phase_timeline(height: int = 6) -> Panel:
    return state_timeline(
        "Rotation phases",
        "Which phase/backend/precision slice runs when (soakd_phase_active is 1 during a "
        "slice). Backends of one phase alternate in slices so that both see the same heat.",
        Target(f"max by ({W_LABELS}) (soakd_phase_active{{{F_WORKLOAD}}})",
               "{{phase}} · {{backend}} · {{precision}} · {{instance}}"),
        value_mappings({0: ("idle", "transparent"), 1: ("running", "green")}),
        height=height,
    )


def stability() -> Dashboard:
    sustained_steps = thresholds((None, "red"), (0.8, "orange"), (0.9, "green"))
    overview: list[Panel | Row] = [
        Row("Overview"),
        stat("Rotations finished",
             "Rotations that ended in the time range, by result (completed, stopped, failed, "
             "skipped).",
             "short",
             Target(zero_if_empty(
                 'sum by (result) (increase(soakd_rotations_total{instance=~"$instance"}'
                 '[$__range]))', "result"), "{{result}}"), decimals=0),
        stat("Mean rotation wall time",
             "Mean wall time of a rotation since the daemon started "
             "(soakd_rotation_duration_seconds histogram sum / count).",
             "s",
             Target(f"sum(soakd_rotation_duration_seconds_sum{{{F_INSTANCE}}})\n/\n"
                    f"sum(soakd_rotation_duration_seconds_count{{{F_INSTANCE}}})")),
        stat("Since the last rotation ended",
             "Time since the most recent rotation ended. Rotations start once an hour; more "
             "than about two hours means the scheduler is stuck or the daemon was down.",
             "s",
             Target(f"time() - (max(soakd_last_rotation_end_timestamp_seconds"
                    f"{{{F_INSTANCE}}}) > 0)"),
             steps=thresholds((None, "green"), (7200, "orange"), (10800, "red"))),
        stat("Worst sustained ratio",
             "Lowest sustained ratio (recent throughput / warm throughput at the phase's "
             "start) of any phase and backend in the time range. Below 0.8 the "
             "SoakdThroughputBelowWarmBaseline alert fires.",
             "percentunit",
             Target(f"min(min_over_time(soakd_sustained_ratio{{{F_WORKLOAD}}}[$__range]))"),
             steps=sustained_steps),
        stat("Numeric mismatches",
             "Outputs off the float64 CPU reference by more than the precision's tolerance, "
             "in the time range. Anything above 0 is a correctness problem.",
             "short",
             Target(zero_if_empty(
                 f"sum(increase(soakd_numeric_mismatches_total{{{F_WORKLOAD}}}[$__range]))")),
             steps=thresholds((None, "green"), (0.5, "red")), decimals=0),
        stat("Fallbacks",
             "Times a phase moved to the next backend of its fallback chain in the time "
             "range (unavailable, conversion failed, out of memory, ...).",
             "short",
             Target(zero_if_empty(
                 f"sum(increase(soakd_fallbacks_total{{{F_FALLBACK}}}[$__range]))")),
             steps=thresholds((None, "green"), (0.5, "orange")), decimals=0),
        phase_timeline(),
    ]

    cpu = 'instance=~"$instance", phase=~"$phase", backend="cpu"'
    speedup = (f"({mean_throughput(F_WORKLOAD, W_LABELS)})\n"
               f"/ on (instance, phase) group_left ()\n"
               f"max by (instance, phase) ({mean_throughput(cpu, W_LABELS)})")
    summary: list[Panel | Row] = [
        Row("Backends side by side (Metal vs Neural Engine, CUDA vs CPU)"),
        table(
            "Backends of each phase, side by side",
            "One line per phase, backend and precision over the dashboard's time range. "
            "Mean throughput is FLOP done / time spent in measured steps (warm-up and model "
            "load excluded). Speedup is over the CPU's best precision for the same phase "
            "(the CPU baseline slice). Worst sustained ratio is the lowest recent/warm "
            "throughput ratio; p99 is over all steps in the range.",
            "short",
            [("Mean throughput", "flops",
              Target(mean_throughput(F_WORKLOAD, W_LABELS))),
             ("Speedup vs CPU", UNIT_TIMES, Target(speedup)),
             ("Worst sustained ratio", "percentunit",
              Target(f"min by ({W_LABELS}) (min_over_time(soakd_sustained_ratio"
                     f"{{{F_WORKLOAD}}}[$__range]))")),
             ("Max variability (CV)", "percentunit",
              Target(f"max by ({W_LABELS}) (max_over_time(soakd_throughput_variation_ratio"
                     f"{{{F_WORKLOAD}}}[$__range]))")),
             ("FLOP per joule", UNIT_FLOP_PER_JOULE,
              Target(f"max by ({W_LABELS}) (last_over_time(soakd_flop_per_joule"
                     f"{{{F_WORKLOAD}}}[$__range]))")),
             ("Step p99", "s",
              Target(f"histogram_quantile(0.99, sum by ({W_LABELS}, le) "
                     f"(increase(soakd_step_duration_seconds_bucket{{{F_WORKLOAD}}}"
                     f"[$__range])))")),
             ("Mismatches", "short", Target(mismatches("$__range")))],
            height=9,
        ),
        bargauge(
            "Mean throughput by phase and backend",
            "FLOP done / time spent in measured steps over the time range, so backends of "
            "one phase can be read against each other at a glance.",
            "flops",
            Target(mean_throughput(F_WORKLOAD, W_LABELS),
                   "{{phase}} · {{backend}} · {{precision}}"),
        ),
        bargauge(
            "Time to first throttle",
            "Seconds from the phase's start to its first throttle event (throttled=true). "
            "throttled=false: no throttle yet, the value is how long it ran without one (a "
            "lower bound). Last value in the time range.",
            "s",
            Target(f"max by ({W_LABELS}, throttled) (last_over_time("
                   f"soakd_time_to_first_throttle_seconds{{{F_WORKLOAD}}}[$__range]))",
                   "{{phase}} · {{backend}} · {{precision}} (throttled={{throttled}})"),
        ),
    ]

    per_phase: list[Panel | Row] = [
        Row("Phase: $phase", repeat="phase"),
        timeseries(
            "Throughput by backend — $phase",
            "FLOP/s of each backend running this phase: rate of soakd_flop_total over 1 m "
            "(recorded) and, dashed, the daemon's own 10 s throughput gauge. Backends "
            "alternate in slices, so each line has gaps while the other backend runs.",
            "flops",
            Target(f"sum by ({W_LABELS}) ({FLOP_RATE}{{{F_WORKLOAD}}})",
                   "{{backend}} · {{precision}} · {{instance}}"),
            Target(f"max by ({W_LABELS}) (soakd_throughput_flop_per_second{{{F_WORKLOAD}}})",
                   "{{backend}} · {{precision}} · {{instance}} (10 s)"),
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*\\(10 s\\)$"},
                        "properties": [{"id": "custom.lineStyle",
                                        "value": {"fill": "dash", "dash": [10, 10]}}]}],
        ),
        timeseries(
            "Sustained ratio — $phase",
            "Recent throughput (last 60 s) over the throughput of the phase's first minute "
            "after warm-up. 1 = holding its speed; the dashed line at 0.8 is the alert "
            "threshold.",
            "percentunit",
            Target(f"max by ({W_LABELS}) (soakd_sustained_ratio{{{F_WORKLOAD}}})",
                   "{{backend}} · {{precision}} · {{instance}}"),
            steps=thresholds((None, "red"), (0.8, "transparent")),
        ),
        timeseries(
            "Rolling variability — $phase",
            "Coefficient of variation (stddev / mean) of throughput over ~0.25 s segments in "
            "the last 60 s of measured time. High values mean jittery throughput (throttling, "
            "contention).",
            "percentunit",
            Target(f"max by ({W_LABELS}) (soakd_throughput_variation_ratio{{{F_WORKLOAD}}})",
                   "{{backend}} · {{precision}} · {{instance}}"),
            width=8,
        ),
        timeseries(
            "Step latency p50 / p99 — $phase",
            "Per-step latency quantiles from the soakd_step_duration_seconds histogram "
            "(recorded, 1 m rate), device-synchronised at step boundaries.",
            "s",
            Target(f"max by ({W_LABELS}) ({STEP_P50}{{{F_WORKLOAD}}})",
                   "p50 {{backend}} · {{precision}} · {{instance}}"),
            Target(f"max by ({W_LABELS}) ({STEP_P99}{{{F_WORKLOAD}}})",
                   "p99 {{backend}} · {{precision}} · {{instance}}"),
            width=8,
        ),
        timeseries(
            "FLOP per joule — $phase",
            "Work per unit of whole-system energy over the phase so far, from cumulative "
            "energy counters (absent without an energy source).",
            UNIT_FLOP_PER_JOULE,
            Target(f"max by ({W_LABELS}) (soakd_flop_per_joule{{{F_WORKLOAD}}})",
                   "{{backend}} · {{precision}} · {{instance}}"),
            width=8,
        ),
    ]

    correctness: list[Panel | Row] = [
        Row("Correctness, fallbacks and failures"),
        timeseries(
            "Reference checks and mismatches",
            "Comparisons with the CPU float64 reference per interval, and how many of them "
            "were off by more than the precision's tolerance.",
            "short",
            Target(f"sum by ({W_LABELS}) (increase(soakd_numeric_checks_total{{{F_WORKLOAD}}}"
                   "[$__rate_interval]))",
                   "checks {{phase}} · {{backend}} · {{precision}}"),
            Target(mismatches("$__rate_interval"),
                   "mismatches {{phase}} · {{backend}} · {{precision}}"),
            bars=True,
            overrides=[{"matcher": {"id": "byRegexp", "options": "^mismatches.*"},
                        "properties": [{"id": "color",
                                        "value": {"mode": "fixed", "fixedColor": "red"}}]}],
        ),
        timeseries(
            "Relative error against the float64 reference",
            "Last norm-wise relative error of each backend's output against the CPU float64 "
            "reference (log scale). fp16 lands around 1e-3, fp32 around 1e-6.",
            "sci",
            Target(f"max by ({W_LABELS}) (soakd_numeric_relative_error{{{F_WORKLOAD}}})",
                   "{{phase}} · {{backend}} · {{precision}}"),
            log=True,
        ),
        bargauge(
            "Fallbacks by reason",
            "Phase moved from backend to to_backend along its fallback chain in the time "
            "range (\"none\" when there was no fallback).",
            "short",
            Target(zero_if_empty(
                "sum by (instance, phase, backend, to_backend, reason) "
                f"(increase(soakd_fallbacks_total{{{F_FALLBACK}}}[$__range]))", "reason"),
                "{{phase}}: {{backend}} → {{to_backend}} ({{reason}})"),
            steps=thresholds((None, "green"), (0.5, "orange")),
        ),
        bargauge(
            "Step failures by reason",
            "Failed slices or steps in the time range (\"none\" when nothing failed).",
            "short",
            Target(zero_if_empty(
                f"sum by ({W_LABELS}, reason) (increase(soakd_step_failures_total"
                f"{{{F_WORKLOAD}}}[$__range]))", "reason"),
                "{{phase}} · {{backend}} · {{precision}} ({{reason}})"),
            steps=thresholds((None, "green"), (0.5, "red")),
        ),
        bargauge(
            "Preparation and warm-up (not in throughput)",
            "Last slice's preparation (model build, reference, Core ML load or cold "
            "compile) and warm-up time. Both are excluded from throughput.",
            "s",
            Target(f"max by ({W_LABELS}) (last_over_time(soakd_prepare_seconds"
                   f"{{{F_WORKLOAD}}}[$__range]))",
                   "prepare {{phase}} · {{backend}} · {{precision}}"),
            Target(f"max by ({W_LABELS}) (last_over_time(soakd_warmup_seconds"
                   f"{{{F_WORKLOAD}}}[$__range]))",
                   "warm-up {{phase}} · {{backend}} · {{precision}}"),
            width=24,
        ),
    ]
    return Dashboard(
        "soakd-stability",
        "soakd · Sustained stability",
        "Does each backend keep its speed for an hour? Per phase: throughput of each backend "
        "side by side, sustained ratio, variability, latency, FLOP per joule, correctness.",
        overview + summary + per_phase + correctness,
        time_from="now-3h",
        annotations=[PHASE_ANNOTATION],
    )


def power_thermal() -> Dashboard:
    level_names = {i: (name, colour)
                   for i, (name, colour) in enumerate(zip(THERMAL_LEVELS, THERMAL_COLOURS,
                                                          strict=True))}
    thermal_total = (f"sum by (instance) (increase(soakd_thermal_pressure_seconds_total"
                     f"{{{F_INSTANCE}}}[$__range]))")
    items: list[Panel | Row] = [
        Row("Power and energy"),
        timeseries(
            "Power per component",
            "Watts from the cumulative energy counters: rate of soakd_energy_joules_total "
            "over 1 m (recorded). powermetrics: cpu, gpu, ane and combined (their sum); NVML: "
            "gpuN; RAPL: package/dram.",
            "watt",
            Target(f"sum by (instance, source, component) ({POWER}{{{F_INSTANCE}}})",
                   "{{component}} ({{source}}) · {{instance}}"),
            width=16,
        ),
        stat("Power now",
             "The daemon's own power gauge: energy-counter delta over its last sampling "
             "interval (about 1 s).",
             "watt",
             Target(f"sum by (instance, source, component) (soakd_power_watts{{{F_INSTANCE}}})",
                    "{{component}} ({{source}})"),
             width=8, height=8),
        bargauge(
            "Energy in the time range",
            "Joules per component over the dashboard's time range (increase of the energy "
            "counters). Components can overlap (a package contains its cores): do not add "
            "them up.",
            "joule",
            Target(f"sum by (instance, source, component) (increase(soakd_energy_joules_total"
                   f"{{{F_INSTANCE}}}[$__range]))",
                   "{{component}} ({{source}}) · {{instance}}"),
        ),
        timeseries(
            "FLOP per joule",
            "Work per unit of whole-system energy for each phase and backend over the phase "
            "so far.",
            UNIT_FLOP_PER_JOULE,
            Target(f"max by ({W_LABELS}) (soakd_flop_per_joule{{{F_WORKLOAD}}})",
                   "{{phase}} · {{backend}} · {{precision}}"),
        ),
        Row("Thermal"),
        state_timeline(
            "Thermal pressure level",
            "The OS thermal pressure level over time (0 nominal … 5 sleeping). Heavy or "
            "above for minutes fires SoakdThermalPressureHeavy.",
            Target(f"max by (instance) (soakd_thermal_pressure_level{{{F_INSTANCE}}})",
                   "{{instance}}"),
            value_mappings(level_names), height=5,
        ),
        phase_timeline(height=5),
        bargauge(
            "Time in each thermal pressure level",
            "Seconds spent at each level in the time range.",
            "s",
            Target(f"sum by (instance, level) (increase(soakd_thermal_pressure_seconds_total"
                   f"{{{F_INSTANCE}}}[$__range]))", "{{level}} · {{instance}}"),
            width=8,
        ),
        bargauge(
            "Share of time in each thermal pressure level",
            "Fraction of the time range spent at each level.",
            "percentunit",
            Target(f"sum by (instance, level) (increase(soakd_thermal_pressure_seconds_total"
                   f"{{{F_INSTANCE}}}[$__range]))\n/ on (instance) group_left ()\n"
                   f"{thermal_total}", "{{level}} · {{instance}}"),
            width=8, limits=(0, 1),
        ),
        timeseries(
            "Throttle events by reason",
            "Throttle events per interval: an NVML clock-event reason, or a thermal pressure "
            "level becoming active (\"none\" when there was none).",
            "short",
            Target(zero_if_empty(
                f"sum by (instance, source, reason) (increase(soakd_throttle_events_total"
                f"{{{F_INSTANCE}}}[$__rate_interval]))", "reason"),
                "{{reason}} ({{source}}) · {{instance}}"),
            width=8, bars=True,
        ),
        timeseries(
            "Temperatures",
            "Sensor temperatures (NVML GPU, /sys/class/thermal zones, SMC where readable).",
            "celsius",
            Target(f"max by (instance, source, sensor) (soakd_temperature_celsius"
                   f"{{{F_INSTANCE}}})", "{{sensor}} ({{source}}) · {{instance}}"),
        ),
        timeseries(
            "Clock frequencies",
            "CPU cluster, GPU and memory clocks as reported by the sources; a drop under "
            "load is the first sign of throttling.",
            "hertz",
            Target(f"max by (instance, source, domain) (soakd_clock_hertz{{{F_INSTANCE}}})",
                   "{{domain}} ({{source}}) · {{instance}}"),
        ),
        Row("Memory"),
        timeseries(
            "Memory by kind",
            "Daemon and worker RSS, system used/available, swap used and the device "
            "allocator (torch.mps / torch.cuda).",
            "bytes",
            Target(f"max by (instance, kind) (soakd_memory_bytes{{{F_INSTANCE}}})",
                   "{{kind}} · {{instance}}"),
            width=24,
        ),
        Row("Telemetry sources"),
        state_timeline(
            "Telemetry sources",
            "up: the source's last read worked. failing: down and its reads fail. not "
            "available: down without read errors, a source this machine does not have (NVML "
            "without an NVIDIA GPU, RAPL in a VM, powermetrics without root), reported, not "
            "hidden.",
            Target(f"2 * max by (instance, source) (soakd_source_up{{{F_INSTANCE}}})\n"
                   f"+ on (instance, source)\n"
                   f"max by (instance, source) (increase(soakd_source_errors_total"
                   f"{{{F_INSTANCE}}}[$__rate_interval]) > bool 0)",
                   "{{source}} · {{instance}}"),
            value_mappings({0: ("not available", "#8e8e8e"), 1: ("failing", "red"),
                            2: ("up", "green"), 3: ("up, some reads failed", "yellow")}),
            height=5,
        ),
        timeseries(
            "Source read errors",
            "Failed reads per source and interval (\"none\" when there were none).",
            "short",
            Target(zero_if_empty(
                f"sum by (instance, source) (increase(soakd_source_errors_total"
                f"{{{F_INSTANCE}}}[$__rate_interval]))", "source"),
                "{{source}} · {{instance}}"),
            bars=True,
        ),
        timeseries(
            "Source read duration",
            "How long each source's last read took. The sampler runs on its own thread, so "
            "a slow source never blocks a scrape.",
            "s",
            Target(f"max by (instance, source) (soakd_source_read_duration_seconds"
                   f"{{{F_INSTANCE}}})", "{{source}} · {{instance}}"),
        ),
    ]
    return Dashboard(
        "soakd-power-thermal",
        "soakd · Power and thermal",
        "Power per component from energy counters, thermal pressure over time and time in "
        "each level, temperatures, throttle events, memory and telemetry source health.",
        items,
        time_from="now-3h",
        annotations=[PHASE_ANNOTATION],
    )


def fleet() -> Dashboard:
    peak = f"({FLOP_PEAK_1H}{{{F_WORKLOAD}}} > 0)"
    heavy = ('soakd_thermal_pressure_seconds_total{instance=~"$instance", '
             'level=~"heavy|trapping|sleeping"}')
    all_levels = (f"sum by (instance) (increase(soakd_thermal_pressure_seconds_total"
                  f"{{{F_INSTANCE}}}[$__range]))")
    items: list[Panel | Row] = [
        Row("Fleet health"),
        stat("Hosts up", "soakd daemons Prometheus scraped successfully.", "short",
             Target(zero_if_empty('count(up{job="soakd", instance=~"$instance"} == 1)')),
             width=6, decimals=0),
        stat("Hosts down", "soakd targets Prometheus could not scrape.", "short",
             Target(zero_if_empty('count(up{job="soakd", instance=~"$instance"} == 0)')),
             width=6, steps=thresholds((None, "green"), (0.5, "red")), decimals=0),
        stat("Hosts with numeric mismatches",
             "Hosts where any backend's output was off the float64 reference in the time "
             "range.",
             "short",
             Target(zero_if_empty(
                 f"count(sum by (instance) (increase(soakd_numeric_mismatches_total"
                 f"{{{F_WORKLOAD}}}[$__range])) > 0)")),
             width=6, steps=thresholds((None, "green"), (0.5, "red")), decimals=0),
        stat("Hosts at heavy thermal pressure now",
             "Hosts whose thermal pressure level is heavy (3) or above right now.",
             "short",
             Target(zero_if_empty(
                 f"count(soakd_thermal_pressure_level{{{F_INSTANCE}}} >= 3)")),
             width=6, steps=thresholds((None, "green"), (0.5, "orange")), decimals=0),
        Row("Which hosts lose throughput"),
        bargauge(
            "Largest throughput loss within a phase, last hour (top 10)",
            "1 − the lowest sustained ratio of any phase/backend on the host in the last "
            "hour: how much throughput it lost against its own warm start. Hosts that lose "
            "the most are first.",
            "percentunit",
            Target(f"topk(10, 1 - min by (instance) ({SUSTAINED_MIN_1H}{{{F_WORKLOAD}}}))",
                   "{{instance}}"),
            steps=thresholds((None, "green"), (0.1, "orange"), (0.2, "red")), limits=(0, 1),
        ),
        bargauge(
            "Peak throughput this hour vs best hour of 7 days (bottom 10)",
            "For each host, the worst phase/backend: this hour's peak FLOP/s over the best "
            "hourly peak of the last 7 days. Below 1 the host is slower than it used to be "
            "(dust, a failing fan, a driver change). Phases that did not run are left out.",
            "percentunit",
            Target(f"bottomk(10, min by (instance) ({peak}\n/\n"
                   f"max_over_time({FLOP_PEAK_1H}{{{F_WORKLOAD}}}[7d])))", "{{instance}}"),
            steps=thresholds((None, "red"), (0.8, "orange"), (0.95, "green")), limits=(0, 1),
        ),
        table(
            "Worst slices in the last hour",
            "The 20 phase/backend/precision series with the lowest sustained ratio in the "
            "last hour, across the fleet.",
            "percentunit",
            [("Lowest sustained ratio (1 h)", "percentunit",
              Target(f"bottomk(20, {SUSTAINED_MIN_1H}{{{F_WORKLOAD}}})"))],
            hide=("Time", "__name__"),
        ),
        timeseries(
            "Sustained ratio per host (worst phase)",
            "Lowest current sustained ratio of any phase/backend on each host.",
            "percentunit",
            Target(f"min by (instance) (soakd_sustained_ratio{{{F_WORKLOAD}}})",
                   "{{instance}}"),
            steps=thresholds((None, "red"), (0.8, "transparent")),
        ),
        timeseries(
            "Hourly peak throughput (weeks view)",
            "Best 1 m FLOP/s of each phase/backend in the preceding hour. Set the time range "
            "to weeks to see slow drift.",
            "flops",
            Target(f"max by ({W_LABELS}) ({FLOP_PEAK_1H}{{{F_WORKLOAD}}})",
                   "{{instance}} · {{phase}} · {{backend}} · {{precision}}"),
        ),
        timeseries(
            "Throughput per host",
            "FLOP/s per host, phase and backend (1 m rate of soakd_flop_total, recorded).",
            "flops",
            Target(f"sum by ({W_LABELS}) ({FLOP_RATE}{{{F_WORKLOAD}}})",
                   "{{instance}} · {{phase}} · {{backend}} · {{precision}}"),
            width=24,
        ),
        Row("Heat and efficiency"),
        bargauge(
            "Share of time at heavy thermal pressure or above",
            "Fraction of the time range each host spent at heavy, trapping or sleeping "
            "thermal pressure.",
            "percentunit",
            Target(f"(sum by (instance) (increase({heavy}[$__range]))\n"
                   f"or {all_levels} * 0)\n/\n{all_levels}", "{{instance}}"),
            steps=thresholds((None, "green"), (0.05, "orange"), (0.25, "red")), limits=(0, 1),
        ),
        bargauge(
            "FLOP per joule per host",
            "Latest FLOP per joule of each host, phase and backend in the time range.",
            UNIT_FLOP_PER_JOULE,
            Target(f"max by ({W_LABELS}) (last_over_time(soakd_flop_per_joule"
                   f"{{{F_WORKLOAD}}}[$__range]))",
                   "{{instance}} · {{phase}} · {{backend}} · {{precision}}"),
        ),
        table(
            "Hosts",
            "Chip, OS and library versions each daemon reports (soakd_info).",
            "none",
            [("Info", "none",
              Target("max by (instance, chip, machine, os, os_version, python, torch, "
                     f"coremltools, version) (soakd_info{{{F_INSTANCE}}})"))],
            hide=("Time", "Value"),
        ),
    ]
    return Dashboard(
        "soakd-fleet",
        "soakd · Fleet",
        "Many hosts at once: who is down, who loses the most throughput within an hour and "
        "against its own history, heat and efficiency per host.",
        items,
        time_from="now-24h",
    )


DASHBOARDS = {
    "soakd-stability.json": stability,
    "soakd-power-thermal.json": power_thermal,
    "soakd-fleet.json": fleet,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text, exactly as committed."""
    return {name: json.dumps(build().render(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a committed file differs")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="output folder")
    args = parser.parse_args(argv)
    stale: list[str] = []
    for name, text in render_all().items():
        path: Path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)} (run python grafana/generate.py)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
