"""soakd's Grafana dashboards: generated, well-formed, and only using what the daemon exports.

Fast and offline (no Grafana, no Prometheus). The live check (a real Prometheus scraping a
real `soakd run`, every query returning data) uses `queries.panel_queries()`.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from promql_lint import analyze, catalogue_series, recorded_series
from queries import (
    BUILTIN_INTERVALS,
    DASHBOARD_DIR,
    REPO,
    dashboards,
    iter_panels,
    panel_queries,
    raw_queries,
    recording_rules,
    substitute,
    variable_names,
)

GENERATOR = REPO / "grafana" / "generate.py"
DATASOURCES = REPO / "grafana" / "provisioning" / "datasources" / "soakd.yaml"
PROVIDERS = REPO / "grafana" / "provisioning" / "dashboards" / "soakd.yaml"

EXPECTED = {"soakd-stability", "soakd-power-thermal", "soakd-fleet"}
REQUIRED_VARIABLES = ("instance", "phase", "backend", "precision")
PANEL_TYPES = {"timeseries", "stat", "bargauge", "table", "state-timeline", "row", "gauge",
               "piechart", "barchart", "text", "heatmap"}
DATASOURCE_VARIABLE_REF = "${datasource}"
BUILTIN_GRAFANA_UID = "-- Grafana --"
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$", re.S)
_EQUALITY_ON_VARIABLE = re.compile(r"""\b\w+\s*(?:=|!=)\s*"[^"]*\$""")

JSONDict = dict[str, Any]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("soakd_grafana_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


@pytest.fixture(scope="module")
def known_series() -> dict[str, frozenset[str]]:
    series, problems = recorded_series(recording_rules(), catalogue_series())
    assert not any(problems.values()), problems
    return series


@pytest.fixture(scope="module")
def provisioned_uids() -> set[str]:
    return {ds["uid"] for ds in yaml.safe_load(DATASOURCES.read_text())["datasources"]}


def walk_datasources(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every value stored under a "datasource" key, anywhere in the dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield f"{path}.{key}", value
            yield from walk_datasources(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_datasources(value, f"{path}[{i}]")


def datasource_problems(dashboard: JSONDict, provisioned: set[str]) -> list[str]:
    problems: list[str] = []
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource")
    var_ok = (ds_var is not None and ds_var.get("type") == "datasource"
              and ds_var.get("query") == "prometheus"
              and ds_var.get("current", {}).get("value") in provisioned)
    for where, ref in walk_datasources(dashboard):
        if not isinstance(ref, dict):
            problems.append(f"{where}: datasource must be a {{type, uid}} object, got {ref!r}")
            continue
        uid, kind = ref.get("uid"), ref.get("type")
        if uid == DATASOURCE_VARIABLE_REF:
            if not var_ok:
                problems.append(f"{where}: uses ${{datasource}} but the dashboard has no "
                                "prometheus datasource variable defaulting to a provisioned uid")
            elif kind != "prometheus":
                problems.append(f"{where}: ${{datasource}} reference with type {kind!r}")
        elif uid == BUILTIN_GRAFANA_UID and kind == "grafana":
            if not where.startswith(".annotations"):
                problems.append(f"{where}: the built-in Grafana data source outside annotations")
        elif uid not in provisioned:
            problems.append(f"{where}: datasource uid {uid!r} is neither ${{datasource}} nor a "
                            f"provisioned uid ({', '.join(sorted(provisioned))})")
    return problems


def query_problems(where: str, expr: str, series: Mapping[str, frozenset[str]],
                   variables: set[str]) -> list[str]:
    problems = [f"{where}: {error}" for error in analyze(expr, series).errors]
    if _EQUALITY_ON_VARIABLE.search(expr):
        problems.append(f"{where}: a template variable must be matched with =~ (All, multi)")
    for name in variable_names(expr):
        if name not in variables and name not in BUILTIN_INTERVALS:
            problems.append(f"{where}: undefined template variable ${name}")
    return problems


def dashboard_problems(dashboard: JSONDict, series: Mapping[str, frozenset[str]],
                       provisioned: set[str]) -> list[str]:
    """Everything wrong with one dashboard; [] when Grafana and soakd's metrics agree."""
    problems: list[str] = []
    schema = dashboard.get("schemaVersion")
    if not isinstance(schema, int) or schema < 39:
        problems.append(f"schemaVersion {schema!r} is not a current Grafana schema (39+)")
    uid = dashboard.get("uid")
    if not isinstance(uid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid):
        problems.append(f"uid {uid!r} is not a valid Grafana uid")
    if not dashboard.get("title"):
        problems.append("dashboard has no title")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    for name in REQUIRED_VARIABLES:
        variable = variables.get(name)
        if variable is None:
            problems.append(f"template variable ${name} is missing")
            continue
        match = _LABEL_VALUES.match(str(variable.get("query", "")))
        if variable.get("type") != "query" or match is None:
            problems.append(f"${name} is not a label_values() query variable")
            continue
        problems += query_problems(f"variable ${name}", match["selector"], series,
                                   set(variables))
        labels = analyze(match["selector"], series).result.labels
        if match["label"] not in labels:
            problems.append(f"${name}: label {match['label']!r} is not on {match['selector']}")

    ids: list[Any] = []
    for panel in iter_panels(dashboard.get("panels", [])):
        title = panel.get("title") or f"panel {panel.get('id')}"
        ids.append(panel.get("id"))
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{title}: unknown panel type {panel.get('type')!r}")
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int)
                                                 for k in ("h", "w", "x", "y")):
            problems.append(f"{title}: gridPos with integer h, w, x, y is missing")
        elif grid["x"] + grid["w"] > 24:
            problems.append(f"{title}: gridPos is wider than the 24-column grid")
        if panel.get("type") == "row":
            continue
        if not panel.get("title") or not panel.get("description"):
            problems.append(f"{title}: a panel needs a title and a description")
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if not isinstance(unit, str) or not unit:
            problems.append(f"{title}: fieldConfig.defaults.unit is not set")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{title}: no queries")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids):
            problems.append(f"{title}: duplicate refId")
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1}, key=str)
        problems.append(f"panel ids are not unique integers (duplicates: {duplicates})")

    for title, expr in raw_queries(dashboard):
        problems += query_problems(title, expr, series, set(variables))
    problems += datasource_problems(dashboard, provisioned)
    return problems


# --- the committed files ------------------------------------------------------------------


def test_committed_json_equals_generator_output(generator: ModuleType) -> None:
    rendered: dict[str, str] = generator.render_all()
    committed = {path.name: path.read_text(encoding="utf-8")
                 for path in DASHBOARD_DIR.glob("*.json")}
    assert sorted(committed) == sorted(rendered)
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: run python grafana/generate.py"


def test_generator_check_mode_reports_a_stale_file(generator: ModuleType,
                                                   tmp_path: Path) -> None:
    assert generator.main(["--out", str(tmp_path)]) == 0
    assert generator.main(["--check", "--out", str(tmp_path)]) == 0
    stale = tmp_path / "soakd-fleet.json"
    stale.write_text(stale.read_text().replace("Fleet", "Fleat"))
    assert generator.main(["--check", "--out", str(tmp_path)]) == 1


def test_the_three_dashboards_exist() -> None:
    loaded = dashboards()
    assert set(loaded) == EXPECTED
    assert {d["uid"] for d in loaded.values()} == EXPECTED
    assert len({d["title"] for d in loaded.values()}) == len(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_is_valid_and_uses_only_exported_metrics(
        name: str, known_series: dict[str, frozenset[str]], provisioned_uids: set[str]) -> None:
    assert dashboard_problems(dashboards()[name], known_series, provisioned_uids) == []


def test_every_recording_rule_is_used_by_a_dashboard() -> None:
    used = "\n".join(expr for _, _, expr in panel_queries())
    unused = [record for record, _ in recording_rules() if record not in used]
    assert unused == []


def test_dashboards_cover_the_issue() -> None:
    """The panels the issue asks for, found by the metrics their queries read."""
    wanted = {
        "soakd-stability": ["soakd_throughput_flop_per_second", "soakd_sustained_ratio",
                            "soakd_throughput_variation_ratio",
                            "soakd_time_to_first_throttle_seconds", "soakd_flop_per_joule",
                            'soakd_step_latency_seconds{', 'quantile="0.5"', 'quantile="0.99"',
                            "soakd_numeric_mismatches_total",
                            "soakd_fallbacks_total", "soakd_phase_active",
                            # issue 14 item 4: duty cycle, the device outlier, the run configuration
                            "soakd_load_gap_seconds_total", "soakd_phase_seconds_total",
                            "soakd_device_outlier", "soakd_device_relative_throughput_ratio",
                            "soakd_run_info"],
        "soakd-power-thermal": ["soakd_energy_joules", "soakd_thermal_pressure_level",
                                "soakd_thermal_pressure_seconds_total",
                                "soakd_temperature_celsius", "soakd_throttle_events_total",
                                "soakd_memory_bytes", "soakd_system_energy_joules_total",
                                "soakd_throttle_active", "soakd_throttled_seconds_total",
                                "soakd_throttle_observable"],
        "soakd-fleet": ["topk(", "bottomk(", "soakd_sustained_ratio:min1h",
                        "soakd_throughput_flop_per_second"],
    }
    for name, needles in wanted.items():
        text = "\n".join(expr for dashboard, _, expr in panel_queries() if dashboard == name)
        assert [n for n in needles if n not in text] == [], name
    stability = dashboards()["soakd-stability"]
    rows = [p for p in stability["panels"] if p["type"] == "row"]
    assert any(r.get("repeat") == "phase" for r in rows), "no per-phase row"
    annotations = stability["annotations"]["list"]
    assert any("soakd_phase_active" in a.get("target", {}).get("expr", "") for a in annotations)


UNITS = {
    "instance_phase_backend_precision:soakd_throughput_flop_per_second:max1h": "flops",
    "soakd_throughput_flop_per_second": "flops",
    "instance_source_component:soakd_energy_joules:rate1m": "watt",
    "soakd_power_watts": "watt",
    "soakd_energy_joules_total": "joule",
    "soakd_flop_per_joule": "si:FLOP/J",
    "soakd_temperature_celsius": "celsius",
    "soakd_memory_bytes": "bytes",
    "soakd_clock_hertz": "hertz",
    "soakd_sustained_ratio": "percentunit",
    "instance_phase_backend_precision:soakd_sustained_ratio:min1h": "percentunit",
    "soakd_throughput_variation_ratio": "percentunit",
    "soakd_step_latency_seconds": "s",
    "soakd_throttled_seconds_total": "s",
    "soakd_device_relative_throughput_ratio": "percentunit",
    "soakd_time_to_first_throttle_seconds": "s",
    "soakd_prepare_seconds": "s",
    "soakd_warmup_seconds": "s",
    "soakd_source_read_duration_seconds": "s",
    "soakd_thermal_pressure_seconds_total": "s",
}


def test_units_are_sensible(known_series: dict[str, frozenset[str]]) -> None:
    """A panel whose metrics all have one natural unit uses it (FLOP/s, W, J, 0-1, s, ...)."""
    checked = 0
    for dashboard in dashboards().values():
        for panel in iter_panels(dashboard["panels"]):
            if panel["type"] in ("row", "table"):
                continue
            exprs = [target["expr"] for target in panel.get("targets", [])]
            metrics = {m for expr in exprs for m in analyze(expr, known_series).metrics}
            wanted = {UNITS.get(metric) for metric in metrics}
            if len(wanted) == 1 and None not in wanted:
                unit = panel["fieldConfig"]["defaults"]["unit"]
                # A quantity over the same quantity is a ratio: 0-1.
                ratio = unit == "percentunit" and any("/" in expr for expr in exprs)
                assert unit in wanted or ratio, f"{panel['title']}: {unit!r} not {wanted}"
                checked += 1
    assert checked >= 20


# --- the checks can fail ------------------------------------------------------------------


def _first_panel_with_targets(dashboard: JSONDict) -> JSONDict:
    return next(p for p in iter_panels(dashboard["panels"]) if p.get("targets"))


def _break_metric(d: JSONDict) -> None:
    _first_panel_with_targets(d)["targets"][0]["expr"] = 'rate(soakd_bogus_total{phase=~"$phase"}[5m])'


def _break_label(d: JSONDict) -> None:
    # soakd_fallbacks_total has no precision label.
    _first_panel_with_targets(d)["targets"][0]["expr"] = (
        'sum(increase(soakd_fallbacks_total{precision=~"$precision"}[$__range]))')


def _break_grouping(d: JSONDict) -> None:
    _first_panel_with_targets(d)["targets"][0]["expr"] = (
        "sum by (sensor) (soakd_memory_bytes)")


def _break_recorded_label(d: JSONDict) -> None:
    _first_panel_with_targets(d)["targets"][0]["expr"] = (
        'instance_source_component:soakd_energy_joules:rate1m{phase=~"$phase"}')


def _break_unit(d: JSONDict) -> None:
    del _first_panel_with_targets(d)["fieldConfig"]["defaults"]["unit"]


def _break_datasource(d: JSONDict) -> None:
    _first_panel_with_targets(d)["datasource"] = {"type": "prometheus", "uid": "nonexistent"}


def _break_datasource_variable(d: JSONDict) -> None:
    d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "datasource"]


def _break_ids(d: JSONDict) -> None:
    panels = [p for p in d["panels"] if p["type"] != "row"]
    panels[1]["id"] = panels[0]["id"]


def _break_grid(d: JSONDict) -> None:
    del _first_panel_with_targets(d)["gridPos"]


def _break_schema(d: JSONDict) -> None:
    d["schemaVersion"] = 16


def _break_variable_matcher(d: JSONDict) -> None:
    _first_panel_with_targets(d)["targets"][0]["expr"] = 'soakd_sustained_ratio{phase="$phase"}'


def _break_variable_name(d: JSONDict) -> None:
    _first_panel_with_targets(d)["targets"][0]["expr"] = 'soakd_sustained_ratio{phase=~"$phas"}'


def _break_template_variable(d: JSONDict) -> None:
    d["templating"]["list"] = [v for v in d["templating"]["list"] if v["name"] != "backend"]


BREAKAGES = {
    "unknown metric": (_break_metric, "'soakd_bogus_total' is not exported"),
    "label not on metric": (_break_label, "label 'precision' in soakd_fallbacks_total"),
    "by() label not on metric": (_break_grouping, "label 'sensor' in sum by"),
    "label not on recorded series": (_break_recorded_label, "label 'phase' in instance_source"),
    "missing unit": (_break_unit, "fieldConfig.defaults.unit is not set"),
    "unresolved datasource": (_break_datasource, "datasource uid 'nonexistent'"),
    "no datasource variable": (_break_datasource_variable, "has no prometheus datasource var"),
    "duplicate panel id": (_break_ids, "panel ids are not unique"),
    "missing gridPos": (_break_grid, "gridPos with integer h, w, x, y is missing"),
    "old schema": (_break_schema, "schemaVersion 16"),
    "variable with =": (_break_variable_matcher, "must be matched with =~"),
    "undefined variable": (_break_variable_name, "undefined template variable $phas"),
    "missing template variable": (_break_template_variable, "template variable $backend is "),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_dashboard_fails_the_check(breakage: str,
                                            known_series: dict[str, frozenset[str]],
                                            provisioned_uids: set[str]) -> None:
    mutate, expected = BREAKAGES[breakage]
    broken = copy.deepcopy(dashboards()["soakd-stability"])
    mutate(broken)
    problems = dashboard_problems(broken, known_series, provisioned_uids)
    assert any(expected in p for p in problems), problems


# --- provisioning and queries.py ----------------------------------------------------------


def test_datasource_provisioning_matches_the_dashboards(generator: ModuleType) -> None:
    config = yaml.safe_load(DATASOURCES.read_text())
    assert config["apiVersion"] == 1
    [source] = config["datasources"]
    assert source["type"] == "prometheus"
    names = sys.modules["soakd_dashboards.queries"]  # loaded by the generator
    assert source["uid"] == names.DATASOURCE_UID
    assert source["name"] == names.DATASOURCE_NAME
    assert source["url"].startswith("http://")


def test_dashboard_provider_points_at_the_dashboards_folder() -> None:
    config = yaml.safe_load(PROVIDERS.read_text())
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    # Grafana expands environment variables in provisioning files; the README sets this one.
    path = os.path.expandvars(provider["options"]["path"].replace(
        "${SOAKD_GRAFANA_DIR}", str(REPO / "grafana")))
    assert Path(path).resolve() == DASHBOARD_DIR.resolve()
    assert sorted(p.stem for p in Path(path).glob("*.json")) == sorted(EXPECTED)


def test_panel_queries_are_ready_for_prometheus() -> None:
    queries = panel_queries()
    assert len(queries) >= 40
    assert {dashboard for dashboard, _, _ in queries} == EXPECTED
    for dashboard, title, expr in queries:
        assert "$" not in expr and "[[" not in expr, (dashboard, title, expr)
    assert substitute('rate(x{phase=~"$phase"}[$__rate_interval])') == \
        'rate(x{phase=~".*"}[1m])'
    assert substitute("increase(x[$__range]) / ${__interval}") == "increase(x[1h]) / 30s"
    records = recording_rules()
    assert records and all(":" in record for record, _ in records)
