"""The PromQL checker the dashboard and rule tests rely on catches what it must."""

from __future__ import annotations

import pytest
from promql_lint import analyze, catalogue_series


@pytest.mark.parametrize(("expr", "error"), [
    ("rate(soakd_flop_total[5m]", "cannot parse"),
    ("rate(soakd_flop_total)", "expected type matrix"),  # rate() of an instant vector
    ("rate(soakd_flop_total[5x])", "duration"),
    ("frobnicate(soakd_flop_total)", "unknown function"),
    ("soakd_flop_totals", "not exported by soakd"),
    ("sum by (nope) (soakd_steps_total)", "label 'nope' in sum by"),
    ("soakd_steps_total / on(nope) soakd_flop_total", "label 'nope' in / on"),
    ("histogram_quantile(0.5, soakd_steps_total)", "without an le label"),
    ('label_replace(soakd_steps_total, "x", "$1", "nope", "(.*)")', "label 'nope' in label_replace"),
])
def test_problems_are_reported(expr: str, error: str) -> None:
    errors = analyze(expr, catalogue_series()).errors
    assert any(error in e for e in errors), errors


def test_labels_flow_through_a_dashboard_query() -> None:
    report = analyze('sum by (instance, phase) (rate(soakd_flop_total{instance=~"$instance"}[$__rate_interval]))\n'
                     '/ on (instance, phase) group_left (backend) max by (instance, phase, backend) '
                     '(soakd_phase_active)', catalogue_series())
    assert report.errors == []
    assert report.result.labels == {"instance", "phase", "backend"}
    assert report.metrics == {"soakd_flop_total", "soakd_phase_active"}
