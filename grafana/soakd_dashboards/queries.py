"""Names and PromQL pieces every soakd dashboard shares: data source, recorded series, filters.

Every metric and label used must exist in daemon/metric_catalog.py or be a recorded series of
grafana/prometheus/rules/soakd-recording.yml (tests/grafana/test_dashboards.py checks it).
"""

from __future__ import annotations

from typing import Any

from daemon.levels import LEVELS

JSON = dict[str, Any]

SCHEMA_VERSION = 39
# The data source provisioned by grafana/provisioning/datasources/soakd.yaml.
DATASOURCE_UID = "soakd-prometheus"
DATASOURCE_NAME = "soakd Prometheus"
DATASOURCE_VAR = "datasource"
DS: JSON = {"type": "prometheus", "uid": "${" + DATASOURCE_VAR + "}"}
GRAFANA_DS: JSON = {"type": "grafana", "uid": "-- Grafana --"}
TAGS = ["soakd"]

# Recorded series (grafana/prometheus/rules/soakd-recording.yml).
FLOP_PEAK_1H = "instance_phase_backend_precision:soakd_throughput_flop_per_second:max1h"
POWER = "instance_source_component:soakd_energy_joules:rate1m"
SUSTAINED_MIN_1H = "instance_phase_backend_precision:soakd_sustained_ratio:min1h"

# A series' throughput while it runs (FLOP/s over its last 10 s of measured steps) and nothing
# while it does not: rate(soakd_flop_total[1m]) of a backend that runs half the time reads about
# half its throughput and ramps in and out of each slice.
THROUGHPUT = "soakd_throughput_flop_per_second"
# Step latency quantiles over the series' last minute of measured time, present while it runs
# (daemon/latency.py); histogram_quantile() over the histogram's buckets is off by up to a
# bucket's width (+66 % p99 at 0.3 s).
LATENCY = "soakd_step_latency_seconds"

# Label filters built from the template variables.
F_INSTANCE = 'instance=~"$instance"'
F_WORKLOAD = 'instance=~"$instance", phase=~"$phase", backend=~"$backend", precision=~"$precision"'
# soakd_fallbacks_total has no precision label (a fallback happens before a precision runs).
F_FALLBACK = 'instance=~"$instance", phase=~"$phase", backend=~"$backend"'
W_LABELS = "instance, phase, backend, precision"
# A workload series down to its device (several GPUs of one host are series of their own).
D_LABELS = "instance, phase, backend, precision, device"

# Grafana's custom unit syntax: SI prefixes in front of the given unit ("12.3 GFLOP/J").
UNIT_FLOP_PER_JOULE = "si:FLOP/J"
UNIT_TIMES = "suffix:×"

# Display names of the ordinal soakd_thermal_pressure_level; the `level` label values are the
# lowercase forms (daemon/levels.py).
THERMAL_LEVELS = tuple(level.capitalize() for level in LEVELS)
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
    """FLOP done / time spent in measured steps over the dashboard's range: exact mean FLOP/s.

    The measured time is soakd_measured_seconds_total, not the histogram's _sum: for sub-ms CUDA
    steps the histogram holds a 1-in-16 sample of the steps, so its _sum is ~1/16 of the time.
    """
    return (f"sum by ({by}) (increase(soakd_flop_total{{{filters}}}[$__range]))\n/\n"
            f"sum by ({by}) (increase(soakd_measured_seconds_total{{{filters}}}[$__range]))")


def latency(quantile: str, filters: str = F_WORKLOAD, by: str = D_LABELS) -> str:
    """A step latency quantile ("0.5", "0.99", "1" for the max) of each series, while it runs."""
    return f'max by ({by}) ({LATENCY}{{{filters}, quantile="{quantile}"}})'

