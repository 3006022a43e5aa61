"""Grafana's JSON model as small Python builders: targets, panels, rows, dashboards, variables.

The output is exactly what grafana/dashboards/*.json hold (schema version SCHEMA_VERSION).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from soakd_dashboards.queries import (
    DATASOURCE_NAME,
    DATASOURCE_UID,
    DATASOURCE_VAR,
    DS,
    F_WORKLOAD,
    GRAFANA_DS,
    JSON,
    SCHEMA_VERSION,
    TAGS,
    W_LABELS,
)

# --- panels -------------------------------------------------------------------------------


@dataclass
class Target:
    """One PromQL query of a panel; `instant`/`table` for table panels."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False

    def render(self, ref_id: str) -> JSON:
        """The target's JSON with its refId ("A", "B", ...)."""
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
    """A Grafana panel before layout: `width`/`height` in grid units (24 to a row)."""

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
        """The panel's JSON at `grid` (gridPos) with its id."""
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
    """Absolute thresholds from (lower bound, colour) steps; the first bound is None (-inf)."""
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
    """A time series panel: lines (or `bars`), a table legend with mean/min/max/last, `steps`
    drawn as dashed threshold lines, a log10 axis with `log`."""
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
    """A single-value panel showing the last value, coloured by `steps`."""
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
    """Horizontal bars of each series' last value between `limits` (min, max; None = auto)."""
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
    """Grafana value mappings from {value: (text, colour)}."""
    return [{"type": "value", "options": {
        str(value): {"text": text, "color": colour, "index": i}
        for i, (value, (text, colour)) in enumerate(sorted(names.items()))}}]


def state_timeline(title: str, description: str, target: Target, mappings: list[JSON],
                   width: int = 24, height: int = 6) -> Panel:
    """A state timeline of one query's values named by `mappings` (see value_mappings)."""
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
    """A full-width row heading; the panels after it flow below it."""

    title: str
    repeat: str | None = None


@dataclass
class Dashboard:
    """A dashboard: its panels and rows laid out left to right, top to bottom, by `render`."""

    uid: str
    title: str
    description: str
    items: list[Panel | Row]
    time_from: str = "now-6h"
    annotations: list[JSON] = field(default_factory=list)

    def render(self) -> JSON:
        """The dashboard's JSON, as committed in grafana/dashboards/ (ids numbered in order)."""
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
    """The template variables every dashboard has: data source, instance, phase, backend, precision."""
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
    """A state timeline of which phase/backend/precision slice runs when."""
    return state_timeline(
        "Rotation phases",
        "Which phase/backend/precision slice runs when (soakd_phase_active is 1 during a "
        "slice). Backends of one phase alternate in slices so that both see the same heat.",
        Target(f"max by ({W_LABELS}) (soakd_phase_active{{{F_WORKLOAD}}})",
               "{{phase}} · {{backend}} · {{precision}} · {{instance}}"),
        value_mappings({0: ("idle", "transparent"), 1: ("running", "green")}),
        height=height,
    )

