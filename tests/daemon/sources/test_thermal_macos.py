"""macOS thermal parsers on real recorded outputs, and the readers through stand-ins.

Sources of the real outputs used here (verbatim):
- NOTIFYUTIL_M4_AIR: mingrath/mbcheck `research/shop-readable-health-facts.md` @2c26259
  (M4 MacBook Air, macOS 26.5.2): `notifyutil -g com.apple.system.thermalpressurelevel`.
- PMSET_APPLE_SILICON: same file, `pmset -g therm` on that M4 Air under load; the same three
  lines are in exelban/stats issue #749 (M1 Pro, macOS 12.1).
- PMSET_INTEL_THROTTLED: `pmset -g therm` from a MacBook Pro Early 2011 on High Sierra
  10.13.6 (newbetuts.com/407192 "Where does the pmset CPU_Speed_Limit variable come from").
- PMSET_THERMLOG_FULL / _THROTTLED: `pmset -g thermlog` output quoted in
  yujitach/MenuMeters issue #158 (tab-separated, as printed).
The "Thermal Warning Level = N" line format is from Apple's pmset.c
(apple-oss-distributions/PowerManagement, show_thermal_warning_level).
"""

from __future__ import annotations

import pytest

from daemon import levels
from daemon.sources.base import SourceError
from daemon.sources.thermal_macos import (
    NotifyThermalSource,
    PmsetThermalSource,
    ThermalParseError,
    ThermalStateSource,
    parse_notifyutil,
    parse_pmset_therm,
)

NOTIFYUTIL_M4_AIR = "com.apple.system.thermalpressurelevel 1\n"

PMSET_APPLE_SILICON = (
    "Note: No thermal warning level has been recorded\n"
    "Note: No performance warning level has been recorded\n"
    "Note: No CPU power status has been recorded\n"
)

PMSET_INTEL_THROTTLED = (
    "Note: No thermal warning level has been recorded\n"
    "Note: No performance warning level has been recorded\n"
    "2020-11-24 13:10:40 +0100 CPU Power notify\n"
    "    CPU_Scheduler_Limit     = 100\n"
    "    CPU_Available_CPUs  = 8\n"
    "    CPU_Speed_Limit     = 35\n"
)

PMSET_THERMLOG_FULL = (
    "2020-06-26 12:30:37 +0200 CPU Power notify\n"
    "\tCPU_Scheduler_Limit \t= 100\n"
    "\tCPU_Available_CPUs \t= 8\n"
    "\tCPU_Speed_Limit \t= 100\n"
)

PMSET_THERMLOG_THROTTLED = (
    "2020-06-26 12:30:37 +0200 CPU Power notify\n"
    "\tCPU_Scheduler_Limit \t= 40\n"
    "\tCPU_Available_CPUs \t= 8\n"
    "\tCPU_Speed_Limit \t= 28\n"
)


def test_notifyutil_real_output():
    value = parse_notifyutil(NOTIFYUTIL_M4_AIR)
    assert value == 1
    assert levels.from_notify_value(value) == "moderate"


@pytest.mark.parametrize("text", ["", "com.apple.system.thermalpressurelevel\n",
                                  "com.apple.system.thermalpressurelevel -1\n",
                                  "other.key 3\n"])
def test_notifyutil_bad_output(text):
    with pytest.raises(ThermalParseError):
        parse_notifyutil(text)


def test_pmset_apple_silicon_records_nothing():
    therm = parse_pmset_therm(PMSET_APPLE_SILICON)
    assert not therm.recorded
    assert therm.level is None


def test_pmset_intel_throttled():
    therm = parse_pmset_therm(PMSET_INTEL_THROTTLED)
    assert (therm.speed_limit, therm.scheduler_limit, therm.available_cpus) == (35, 100, 8)
    assert therm.thermal_warning_level is None
    assert therm.level == "trapping"  # below 50 % of nominal clock


def test_pmset_thermlog_tabs():
    assert parse_pmset_therm(PMSET_THERMLOG_FULL).level == "nominal"
    throttled = parse_pmset_therm(PMSET_THERMLOG_THROTTLED)
    assert (throttled.speed_limit, throttled.scheduler_limit) == (28, 40)
    assert throttled.level == "trapping"


def test_pmset_warning_level_line_and_last_value_wins():
    text = (PMSET_THERMLOG_THROTTLED + PMSET_THERMLOG_FULL
            + "2020-06-26 12:31:00 +0200 Thermal Warning Level = 100\n")
    therm = parse_pmset_therm(text)
    assert therm.speed_limit == 100 and therm.thermal_warning_level == 100
    assert therm.level == "heavy"  # kIOPMThermalWarningLevelDanger (= 100)


def test_pmset_garbage_is_a_parse_error():
    with pytest.raises(ThermalParseError):
        parse_pmset_therm("pmset: unknown option\n")


def test_notify_source_with_stand_in_reader():
    values = iter([0, 2, 30])
    source = NotifyThermalSource(reader=lambda: next(values), platform="darwin")
    assert source.available() == (True, "ok")
    assert [source.read().thermal_pressure for _ in range(3)] == ["nominal", "heavy", "heavy"]


def test_notify_source_unavailable_off_macos():
    ok, reason = NotifyThermalSource(platform="linux").available()
    assert not ok and "macOS" in reason


def test_thermal_state_source_with_stand_in_reader():
    values = iter([0, 1, 2, 3])
    source = ThermalStateSource(reader=lambda: next(values), platform="darwin")
    assert [source.read().thermal_pressure for _ in range(4)] == [
        "nominal", "moderate", "heavy", "trapping"]
    assert not ThermalStateSource(platform="linux").available()[0]


def test_pmset_source_caches_and_counts_throttle_transitions():
    outputs = iter([PMSET_THERMLOG_FULL, PMSET_THERMLOG_THROTTLED, PMSET_THERMLOG_THROTTLED,
                    PMSET_THERMLOG_FULL, PMSET_INTEL_THROTTLED])
    now = [0.0]
    calls = []

    def runner():
        calls.append(now[0])
        return next(outputs)

    source = PmsetThermalSource(runner=runner, min_interval_s=10, clock=lambda: now[0])
    assert source.available() == (True, "ok")
    events = []
    for t in (0, 5, 10, 20, 30, 40):
        now[0] = t
        reading = source.read()
        events.append(reading.throttle_events.get("cpu_speed_limit", 0))
    assert calls == [0, 10, 20, 30, 40]  # t=5 reused the cached value
    assert events == [0, 0, 1, 0, 0, 1]


def test_pmset_source_apple_silicon_is_unavailable():
    ok, reason = PmsetThermalSource(runner=lambda: PMSET_APPLE_SILICON).available()
    assert not ok and "Apple Silicon" in reason


def test_pmset_source_bad_output_is_a_read_error():
    source = PmsetThermalSource(runner=lambda: "nonsense")
    with pytest.raises(SourceError):
        source.read()
