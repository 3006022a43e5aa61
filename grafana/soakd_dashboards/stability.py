"""The sustained-stability dashboard: throughput, its ratio to the phase's start, latency, correctness."""

from __future__ import annotations

from soakd_dashboards.panels import (
    PHASE_ANNOTATION,
    Dashboard,
    Panel,
    Row,
    Target,
    bargauge,
    phase_timeline,
    stat,
    table,
    thresholds,
    timeseries,
)
from soakd_dashboards.queries import (
    D_LABELS,
    F_FALLBACK,
    F_INSTANCE,
    F_WORKLOAD,
    LATENCY,
    THROUGHPUT,
    UNIT_FLOP_PER_JOULE,
    UNIT_TIMES,
    W_LABELS,
    latency,
    mean_throughput,
    mismatches,
    zero_if_empty,
)


def stability() -> Dashboard:
    """soakd-stability.json."""
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
            "throughput ratio. Step p99 (worst minute) is the highest p99 of any minute of the "
            "series' measured steps in the range (soakd_step_latency_seconds).",
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
             ("Step p99 (worst minute)", "s",
              Target(f"max by ({W_LABELS}) (max_over_time({LATENCY}"
                     f"{{{F_WORKLOAD}, quantile=\"0.99\"}}[$__range]))")),
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
        bargauge(
            "Stability score (worst loop / best loop)",
            "Each series' worst slice throughput over its best in its last phase (3DMark's loop "
            "stability; a loop is one slice). Red below 0.97, the default pass mark "
            "(verdicts.pass_mark; the daemon exports its own as soakd_stability_pass_mark_ratio). "
            "Last value in the time range.",
            "percentunit",
            Target(f"min by ({W_LABELS}, device) (last_over_time(soakd_stability_ratio"
                   f"{{{F_WORKLOAD}}}[$__range]))",
                   "{{phase}} · {{backend}} · {{precision}} · device {{device}}"),
            steps=thresholds((None, "red"), (0.97, "green")), limits=(0, 1),
        ),
        bargauge(
            "Slowdowns, explained and unexplained",
            "Loops at least 5 % below their phase's warm level (the median of its first two loops) "
            "in the time range. explained=true: a throttle reason, thermal pressure, the clock or "
            "the power cap changed with it; explained=false: nothing in the telemetry did (the "
            "SoakdUnexplainedSlowdown alert). `soakd status` lists each with its readings.",
            "short",
            Target(f"sum by ({W_LABELS}, device, explained) (increase(soakd_slowdowns_total"
                   f"{{{F_WORKLOAD}}}[$__range]))",
                   "{{phase}} · {{backend}} · {{precision}} · device {{device}} (explained={{explained}})"),
            steps=thresholds((None, "green"), (0.5, "orange")),
        ),
    ]

    per_phase: list[Panel | Row] = [
        Row("Phase: $phase", repeat="phase"),
        timeseries(
            "Throughput by backend — $phase",
            "FLOP/s of each backend (and device) running this phase, over its last 10 s of "
            "measured steps (soakd_throughput_flop_per_second). Backends alternate in slices: a "
            "line is there while its backend runs and has a gap while the other one does (a "
            "1 m rate() of the FLOP counter would read about half the throughput and ramp).",
            "flops",
            Target(f"max by ({D_LABELS}) ({THROUGHPUT}{{{F_WORKLOAD}}})",
                   "{{backend}} · {{precision}} · dev {{device}} · {{instance}}"),
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
            "Per-step latency quantiles over each series' last minute of measured steps "
            "(soakd_step_latency_seconds, from 1 % log buckets: within ~0.5 % of the exact "
            "quantile), device-synchronised at step boundaries; a gap while the series does not "
            "run. Not histogram_quantile(): its linear interpolation inside a bucket reads up "
            "to the bucket's width high.",
            "s",
            Target(latency("0.5"), "p50 {{backend}} · {{precision}} · dev {{device}} · {{instance}}"),
            Target(latency("0.99"), "p99 {{backend}} · {{precision}} · dev {{device}} · {{instance}}"),
            width=8, log=True,
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

    run_labels = f"{D_LABELS}, run_key, shapes, technique, memory_format, variant, tf32"
    devices: list[Panel | Row] = [
        Row("Load, devices and run configuration"),
        bargauge(
            "Duty cycle",
            "Share of each series' slice turns with a measured step running in the time range: "
            "1 − load gap / slice time (soakd_load_gap_seconds_total over "
            "soakd_phase_seconds_total). The rest is hand-over, warm-up, preparation inside the "
            "phase and reference checks; preparation done ahead is not counted.",
            "percentunit",
            Target(f"1 - (\nsum by ({D_LABELS}) (increase(soakd_load_gap_seconds_total"
                   f"{{{F_WORKLOAD}}}[$__range]))\n/\n"
                   f"sum by ({D_LABELS}) (increase(soakd_phase_seconds_total"
                   f"{{{F_WORKLOAD}}}[$__range]))\n)",
                   "{{phase}} · {{backend}} · {{precision}} · dev {{device}} · {{instance}}"),
            width=8, steps=thresholds((None, "red"), (0.9, "orange"), (0.98, "green")),
            limits=(0, 1),
        ),
        bargauge(
            "Device throughput vs the host's median device",
            "On a host with several devices of one backend: each device's sustained throughput "
            "in its last phase (second half of its slices) over the host's median device "
            "(soakd_device_relative_throughput_ratio). Below 0.95 the device is an outlier and "
            "SoakdDeviceOutlier fires. Empty on a host with one device.",
            "percentunit",
            Target(f"max by ({D_LABELS}) (last_over_time("
                   f"soakd_device_relative_throughput_ratio{{{F_WORKLOAD}}}[$__range]))",
                   "{{phase}} · {{backend}} · {{precision}} · dev {{device}} · {{instance}}"),
            width=8, steps=thresholds((None, "red"), (0.95, "green")), limits=(0, None),
        ),
        stat("Outlier devices now",
             "Devices whose last phase ran below 0.95 of the host's median device "
             "(soakd_device_outlier == 1); the journal and the log name them (device_outlier).",
             "short",
             Target(zero_if_empty(f"count(soakd_device_outlier{{{F_WORKLOAD}}} == 1)")),
             width=8, height=8, steps=thresholds((None, "green"), (0.5, "red")), decimals=0),
        table(
            "Run configuration",
            "How each series' slices run (soakd_run_info): shapes, technique (eager, "
            "cuda_graph, coreml), memory format, model variant, TF32, and run_key, a digest of "
            "all of them. Figures of different run keys are never pooled.",
            "none",
            [("Run", "none",
              Target(f"max by ({run_labels}) (last_over_time(soakd_run_info{{{F_WORKLOAD}}}"
                     f"[$__range]))"))],
            hide=("Time", "Value"),
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
        overview + summary + per_phase + devices + correctness,
        time_from="now-3h",
        annotations=[PHASE_ANNOTATION],
    )
