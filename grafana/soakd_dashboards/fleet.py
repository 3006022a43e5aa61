"""The fleet dashboard: many hosts at once, who is down, who loses throughput, heat and efficiency."""

from __future__ import annotations

from soakd_dashboards.panels import Dashboard, Panel, Row, Target, bargauge, stat, table, thresholds, timeseries
from soakd_dashboards.queries import (
    F_INSTANCE,
    F_WORKLOAD,
    FLOP_PEAK_1H,
    SUSTAINED_MIN_1H,
    THROUGHPUT,
    UNIT_FLOP_PER_JOULE,
    W_LABELS,
    zero_if_empty,
)


def fleet() -> Dashboard:
    """soakd-fleet.json."""
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
            "Best FLOP/s of each phase/backend in the preceding hour (its 10 s throughput while "
            "it ran, never diluted by another backend's slices). Set the time range to weeks to "
            "see slow drift.",
            "flops",
            Target(f"max by ({W_LABELS}) ({FLOP_PEAK_1H}{{{F_WORKLOAD}}})",
                   "{{instance}} · {{phase}} · {{backend}} · {{precision}}"),
        ),
        timeseries(
            "Throughput per host",
            "FLOP/s per host, phase and backend while it runs (soakd_throughput_flop_per_second "
            "summed over the host's devices), a gap while it does not.",
            "flops",
            Target(f"sum by ({W_LABELS}) ({THROUGHPUT}{{{F_WORKLOAD}}})",
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
