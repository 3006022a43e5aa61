"""Run conditions and the cool start (daemon/conditions.py): pmset's Low Power Mode, other processes'
CPU share, the cool-down wait with a stand-in thermometer, the conditions row of a rotation."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from fake_sources import Clock

from daemon.conditions import (
    CoolDown,
    RunConditions,
    hot_sensors,
    other_cpu_ratio,
    parse_low_power_mode,
    read_low_power_mode,
    wait_until_cool,
)
from daemon.config import Config
from daemon.sampler import Sampler
from daemon.sources.base import Reading, Source

# `pmset -g` on a MacBook Air, macOS Ventura, as a user published it (a guide to lid-closed sleep):
# settings in use after the "Currently in use:" header, one `name value` per line.
PMSET_VENTURA = """System-wide power settings:
Currently in use:
 standby              1
 Sleep On Power Button 1
 hibernatefile        /var/vm/sleepimage
 powernap             1
 networkoversleep     0
 disksleep            10
 sleep                1 (sleep prevented by powerd)
 hibernatemode        3
 ttyskeepawake        1
 displaysleep         10
 tcpkeepalive         1
 lowpowermode         0
 womp                 0
"""
# macOS 15 renamed the setting `powermode`: 0 automatic, 1 low power, 2 high power.
PMSET_SEQUOIA_LOW = PMSET_VENTURA.replace(" lowpowermode         0", " powermode            1")
PMSET_SEQUOIA_HIGH = PMSET_VENTURA.replace(" lowpowermode         0", " powermode            2")


def test_low_power_mode_from_pmset() -> None:
    assert parse_low_power_mode(PMSET_VENTURA) is False
    assert parse_low_power_mode(PMSET_VENTURA.replace("lowpowermode         0", "lowpowermode         1")) is True
    assert parse_low_power_mode(PMSET_SEQUOIA_LOW) is True
    assert parse_low_power_mode(PMSET_SEQUOIA_HIGH) is False  # High Power Mode is not low power
    assert parse_low_power_mode(" sleep 1\n displaysleep 10\n") is None  # a desktop that has neither
    assert parse_low_power_mode("") is None


def test_only_the_settings_in_use_count() -> None:
    """A battery profile's lowpowermode 1 listed before the settings in use does not count."""
    text = "Battery Power:\n lowpowermode         1\nCurrently in use:\n lowpowermode         0\n"
    assert parse_low_power_mode(text) is False


def test_pmset_runs_on_macos_only() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **_: object) -> SimpleNamespace:
        calls.append(argv)
        return SimpleNamespace(returncode=0, stdout=PMSET_SEQUOIA_LOW)

    assert read_low_power_mode(run, platform="linux") is None and calls == []
    assert read_low_power_mode(run, platform="darwin") is True and calls == [["pmset", "-g"]]

    def missing(argv: list[str], **_: object) -> SimpleNamespace:
        raise FileNotFoundError("pmset")

    assert read_low_power_mode(missing, platform="darwin") is None


def test_other_processes_cpu_share_subtracts_this_process() -> None:
    readings = iter([(1000.0, 400.0, 50.0), (1004.0, 403.0, 51.0)])  # (all, busy, own) CPU seconds
    assert other_cpu_ratio(0.0, sleep=lambda s: None, read=lambda: next(readings)) == pytest.approx(0.5)
    assert other_cpu_ratio(0.0, sleep=lambda s: None, read=lambda: None) is None
    real = other_cpu_ratio(0.05)
    assert real is None or 0.0 <= real <= 1.0


class Cooling:
    """A stand-in thermometer: each read is `step` degrees cooler, down to `floor`."""

    def __init__(self, start: float, step: float, floor: float) -> None:
        self.value, self.step, self.floor, self.reads = start, step, floor, 0

    def __call__(self) -> dict[str, float]:
        self.reads += 1
        value = self.value
        self.value = max(self.floor, self.value - self.step)
        return {"nvml/gpu0": value, "sysfs_thermal/cpu": 40.0}


def test_the_cool_down_waits_until_every_sensor_is_near_idle() -> None:
    idle = {"nvml/gpu0": 35.0, "sysfs_thermal/cpu": 40.0}
    thermometer = Cooling(start=70.0, step=10.0, floor=38.0)
    result = wait_until_cool(thermometer, idle, margin=5.0, max_wait=60.0, stop=threading.Event(), poll_s=0.01)
    assert result.state == "cool" and result.hot == ()
    assert thermometer.reads == 4  # 70, 60, 50 (hot), 40 (within 35 + 5)


def test_the_cool_down_gives_up_after_the_maximum_wait() -> None:
    clock = Clock(0.0)
    stop = threading.Event()

    def thermometer() -> dict[str, float]:
        clock.now += 10.0  # each read takes 10 s of the stand-in clock
        return {"nvml/gpu0": 80.0}

    result = wait_until_cool(thermometer, {"nvml/gpu0": 35.0}, 5.0, max_wait=30.0, stop=stop, poll_s=0.0,
                             clock=clock)
    assert result == CoolDown("timeout", 30.0, ("nvml/gpu0",))


def test_the_cool_down_is_off_stopped_or_without_reference() -> None:
    hot = Cooling(start=90.0, step=0.0, floor=90.0)
    idle = {"nvml/gpu0": 35.0}
    assert wait_until_cool(hot, idle, 5.0, max_wait=0.0, stop=threading.Event()).state == "off"
    assert hot.reads == 0
    stop = threading.Event()
    stop.set()
    assert wait_until_cool(hot, idle, 5.0, max_wait=60.0, stop=stop).state == "stopped"
    assert wait_until_cool(hot, {"other/sensor": 30.0}, 5.0, 60.0, threading.Event()).state == "no_reference"


def test_hot_sensors_need_an_idle_reading() -> None:
    assert hot_sensors({"a": 50.0, "b": 41.0, "c": 99.0}, {"a": 40.0, "b": 40.0}, 5.0) == ["a"]


class Thermometer(Source):
    """A temperature source whose reading the test sets."""

    name = "stand_in"

    def __init__(self) -> None:
        self.celsius = 38.0

    def available(self) -> tuple[bool, str]:
        return True, "ok"

    def read(self) -> Reading:
        return Reading(temperatures_celsius={"gpu0": self.celsius}, thermal_pressure="nominal")


def test_a_rotation_that_starts_hot_is_flagged_and_its_conditions_recorded() -> None:
    source = Thermometer()
    sampler = Sampler([source])
    sampler.sample_once()  # the daemon starts idle: 38 °C
    conditions = RunConditions(sampler, battery=lambda: (True, 64.0), low_power=lambda: True,
                               cpu_share=lambda: 0.25)
    assert conditions.measured_idle == {"stand_in/gpu0": 38.0}
    source.celsius = 61.0
    sampler.sample_once()
    row = conditions.before_rotation(Config(), threading.Event())  # no cool-down by default
    assert (row.cooldown, row.cooldown_seconds) == ("off", 0.0)
    assert row.started_hot is True and row.hot_sensors == ["stand_in/gpu0"]
    assert row.temperatures == {"stand_in/gpu0": 61.0} and row.idle_temperatures == {"stand_in/gpu0": 38.0}
    assert (row.on_battery, row.battery_percent, row.low_power_mode, row.other_cpu_ratio) == (True, 64.0, True, 0.25)
    assert row.thermal_level == "nominal" and row.margin_celsius == 5.0
    # a configured idle temperature replaces the measured one, for every sensor
    config = Config(cooldown_idle_celsius=60.0)
    assert conditions.before_rotation(config, threading.Event()).started_hot is False


def test_the_cool_down_before_a_rotation_waits_for_the_stand_in_to_cool() -> None:
    source = Thermometer()
    sampler = Sampler([source], interval_s=0.05)
    sampler.start()
    try:
        conditions = RunConditions(sampler, battery=lambda: (None, None), low_power=lambda: None,
                                   cpu_share=lambda: None, poll_s=0.05)
        source.celsius = 70.0  # the last rotation left it hot
        sampler.sample_once()
        threading.Timer(0.5, lambda: setattr(source, "celsius", 40.0)).start()
        config = Config(cooldown_max_wait_seconds=30.0, cooldown_margin_celsius=3.0)
        row = conditions.before_rotation(config, threading.Event())
    finally:
        sampler.stop()
    assert row.cooldown == "cool" and 0.3 <= row.cooldown_seconds < 10.0
    assert row.started_hot is False and row.temperatures == {"stand_in/gpu0": 40.0}
