"""The power and thermal dashboard: energy, power per component, thermal pressure, temperatures, memory."""

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
    state_timeline,
    timeseries,
    value_mappings,
)
from soakd_dashboards.queries import (
    F_INSTANCE,
    F_WORKLOAD,
    POWER,
    THERMAL_COLOURS,
    THERMAL_LEVELS,
    UNIT_FLOP_PER_JOULE,
    W_LABELS,
    zero_if_empty,
)


def power_thermal() -> Dashboard:
    """soakd-power-thermal.json."""
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
        timeseries(
            "Whole-system power",
            "Watts of the whole system from soakd_system_energy_joules_total: the outermost "
            "energy totals present on this host, no rail counted twice (RAPL psys or package + "
            "dram, plus every NVML GPU; powermetrics combined on a Mac).",
            "watt",
            Target(f"sum by (instance) (rate(soakd_system_energy_joules_total{{{F_INSTANCE}}}"
                   "[$__rate_interval]))", "system · {{instance}}"),
            width=16,
        ),
        stat("Whole-system energy in the range",
             "Joules of the whole system over the dashboard's time range (increase of "
             "soakd_system_energy_joules_total): unlike the per-component bars, this can be "
             "read as a total.",
             "joule",
             Target(f"sum by (instance) (increase(soakd_system_energy_joules_total"
                    f"{{{F_INSTANCE}}}[$__range]))", "{{instance}}"),
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
        state_timeline(
            "Throttling",
            "Per throttle reason: throttled (soakd_throttle_active 1: a clock reduction imposed "
            "for power, heat or reliability, daemon/throttle.py) or not. A host with no reason "
            "seen shows one row, reason none: not throttled where a source can see throttling, "
            "unknown where none can (soakd_throttle_observable 0).",
            Target(f"max by (instance, source, reason) (soakd_throttle_active{{{F_INSTANCE}}})\n"
                   f"or on (instance)\n"
                   f"label_replace(max by (instance) (soakd_throttle_observable{{{F_INSTANCE}}}) - 1,"
                   f' "reason", "none", "", "")',
                   "{{reason}} {{source}} · {{instance}}"),
            value_mappings({-1: ("unknown (no throttle source)", "#8e8e8e"),
                            0: ("not throttled", "green"), 1: ("throttled", "red")}),
            width=16, height=5,
        ),
        bargauge(
            "Time throttled by reason",
            "Seconds spent throttled per reason in the time range "
            "(soakd_throttled_seconds_total; \"none\" when no throttle was seen).",
            "s",
            Target(zero_if_empty(
                f"sum by (instance, source, reason) (increase(soakd_throttled_seconds_total"
                f"{{{F_INSTANCE}}}[$__range]))", "reason"),
                "{{reason}} ({{source}}) · {{instance}}"),
            width=8, height=5,
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
        Row("Hardware errors"),
        bargauge(
            "Hardware error counts",
            "Each device's error counters as it reports them (NVML): xid since soakd started, "
            "volatile ECC corrected/uncorrected since the driver loaded, PCIe replays, remapped "
            "rows correctable/uncorrectable over the GPU's life. A counter the device does not "
            "support is absent (soakd_reading_unavailable says why), never shown as 0.",
            "short",
            Target(f"max by (instance, source, device, kind) (soakd_hardware_errors_total"
                   f"{{{F_INSTANCE}}})", "{{kind}} {{device}} ({{source}}) · {{instance}}"),
            width=8, height=6,
        ),
        timeseries(
            "New hardware errors",
            "Errors counted per interval while soakd watched (increase of "
            "soakd_hardware_errors_total); any fires SoakdHardwareErrors. The journal's "
            "hardware_error event names the phase that was running.",
            "short",
            Target(f"sum by (instance, source, device, kind) (increase(soakd_hardware_errors_total"
                   f"{{{F_INSTANCE}}}[$__rate_interval]))",
                   "{{kind}} {{device}} ({{source}}) · {{instance}}"),
            width=8, height=6, bars=True,
        ),
        state_timeline(
            "Row remapping",
            "row_remap_pending: a memory row waits for a GPU reset to be remapped "
            "(SoakdRowRemapPending); row_remap_failure: no spare row was left "
            "(SoakdRowRemapFailure: service the GPU).",
            Target(f"max by (instance, source, device, condition) (soakd_hardware_condition"
                   f"{{{F_INSTANCE}}})", "{{condition}} {{device}} ({{source}}) · {{instance}}"),
            value_mappings({0: ("no", "green"), 1: ("yes", "red")}),
            width=8, height=6,
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
        "each level, temperatures, throttle events, memory, hardware errors and telemetry "
        "source health.",
        items,
        time_from="now-3h",
        annotations=[PHASE_ANNOTATION],
    )
