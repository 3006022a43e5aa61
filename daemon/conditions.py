"""Run conditions and the cool start: what a rotation starts under, and an optional wait to cool.

Before each rotation the service asks `RunConditions.before_rotation`, which

1. optionally waits for the devices to cool (`cooldown.max_wait_seconds` > 0): until every
   temperature sensor is within `cooldown.margin_celsius` of its idle temperature, at most the
   maximum wait (`wait_until_cool`). The idle temperature is what each sensor read when the
   daemon started (it starts idle: no rotation has run yet), or `cooldown.idle_celsius` for
   every sensor. The wait happens before the rotation starts, so no phase's time includes it;
   it is reported on its own (journal table `conditions`, `soakd_cooldown_seconds`);
2. records the conditions (daemon/records.ConditionsRow): AC or battery and the charge
   (psutil.sensors_battery), macOS Low Power Mode (`pmset -g`, `parse_low_power_mode`), the
   thermal pressure level and every temperature from the sampler, the share of CPU time other
   processes used over a short window (`other_cpu_ratio`), and whether the rotation started
   hot (some sensor above its idle temperature plus the margin).

Temperatures are named "source/sensor" as in the journal's telemetry rows.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.records import ConditionsRow
from daemon.sampler import Sampler

CPU_WINDOW_S = 0.5  # how long other processes' CPU share is measured at a rotation's start
POLL_S = 2.0  # how often the cool-down reads the temperatures
PMSET_TIMEOUT_S = 5.0

Thermometer = Callable[[], Mapping[str, float]]


def parse_low_power_mode(text: str) -> bool | None:
    """macOS Low Power Mode from `pmset -g` output: True/False, None when it says nothing.

    `pmset -g` lists the settings in use (after "Currently in use:" where that header appears),
    one `name value` per line. macOS 12-14 print `lowpowermode 0|1`; macOS 15 and later
    `powermode 0|1|2` (0 automatic, 1 low power, 2 high power). Where both appear, either at
    low power counts.
    """
    lines = text.splitlines()
    for index, line in enumerate(lines):  # only the settings in use, where pmset says which
        if line.strip().lower().startswith("currently in use"):
            lines = lines[index + 1:]
            break
    found: bool | None = None
    for line in lines:
        words = line.split()
        if len(words) < 2 or not words[1].isdigit():
            continue
        if words[0] in ("lowpowermode", "powermode"):  # 1 is low power in both
            found = bool(found) or words[1] == "1"
    return found


def read_low_power_mode(run: Callable[..., Any] = subprocess.run, platform: str = sys.platform) -> bool | None:
    """Low Power Mode now (macOS, `pmset -g`); None elsewhere or when pmset cannot tell."""
    if platform != "darwin":
        return None
    try:
        done = run(["pmset", "-g"], capture_output=True, text=True, timeout=PMSET_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_low_power_mode(done.stdout or "") if done.returncode == 0 else None


def battery_state() -> tuple[bool | None, float | None]:
    """(on battery, charge percent) from psutil.sensors_battery; (None, None) without a
    battery or where psutil cannot tell."""
    import psutil

    try:
        battery = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError, RuntimeError):
        return None, None
    if battery is None:
        return None, None
    plugged = battery.power_plugged
    return (None if plugged is None else not plugged), float(battery.percent)


CpuTimes = tuple[float, float, float]  # CPU seconds: all there were, busy, this process's (children included)


def cpu_times_now() -> CpuTimes | None:
    """(all, busy, own) CPU seconds so far, summed over CPUs (psutil); None where unreadable."""
    import psutil

    try:
        system, own = psutil.cpu_times(), psutil.Process().cpu_times()
    except (psutil.Error, OSError):
        return None
    # Linux counts guest time inside user time already
    total = float(sum(system)) - getattr(system, "guest", 0.0) - getattr(system, "guest_nice", 0.0)
    idle = float(system.idle + getattr(system, "iowait", 0.0))
    return total, total - idle, float(own.user + own.system + own.children_user + own.children_system)


def other_cpu_ratio(window_s: float = CPU_WINDOW_S, sleep: Callable[[float], None] = time.sleep,
                    read: Callable[[], CpuTimes | None] = cpu_times_now) -> float | None:
    """Share (0-1) of all CPU time that processes other than this one (and its reaped children)
    used over `window_s`: the whole system's busy CPU time minus this process's, over all the CPU
    time there was. None where it cannot be read."""
    before = read()
    sleep(window_s)
    after = read()
    if before is None or after is None or after[0] <= before[0]:
        return None
    busy, own = after[1] - before[1], after[2] - before[2]
    return min(1.0, max(0.0, busy - own) / (after[0] - before[0]))


def hot_sensors(temperatures: Mapping[str, float], idle: Mapping[str, float], margin: float) -> list[str]:
    """Sensors above their idle temperature plus `margin` (sensors without an idle reading are
    not judged)."""
    return sorted(name for name, value in temperatures.items()
                  if name in idle and value > idle[name] + margin)


@dataclass(frozen=True)
class CoolDown:
    """What the cool-down did: `state` ("off", "cool", "timeout", "stopped", "no_reference"),
    `seconds` waited, and the sensors still hot at its end."""

    state: str
    seconds: float = 0.0
    hot: tuple[str, ...] = ()


def wait_until_cool(read: Thermometer, idle: Mapping[str, float], margin: float, max_wait: float,
                    stop: threading.Event, poll_s: float = POLL_S,
                    clock: Callable[[], float] = time.monotonic) -> CoolDown:
    """Wait until every sensor `read()` reports that has an idle reading is within `margin` of it,
    at most `max_wait` seconds (reading every `poll_s`); returns at once when already cool, and
    when `stop` is set ("stopped"). `max_wait` <= 0 is "off"; no idle reading for any sensor
    is "no_reference"."""
    if max_wait <= 0:
        return CoolDown("off")
    started = clock()
    while True:
        temperatures = read()
        if not set(temperatures) & set(idle):
            return CoolDown("no_reference", clock() - started)
        hot = tuple(hot_sensors(temperatures, idle, margin))
        waited = clock() - started
        if not hot:
            return CoolDown("cool", waited)
        if waited >= max_wait:
            return CoolDown("timeout", waited, hot)
        if stop.wait(min(poll_s, max(0.0, max_wait - waited))):
            return CoolDown("stopped", clock() - started, hot)


def temperatures_of(snapshot: Any) -> dict[str, float]:
    """A snapshot's temperatures as {"source/sensor": °C}."""
    return {f"{source}/{sensor}": float(value) for (source, sensor), value in snapshot.temperatures_celsius.items()}


class RunConditions:
    """Idle temperatures, taken when it is made (the daemon starts idle), and the conditions of
    each rotation. `battery`, `low_power`, `cpu_share` and the cool-down's `poll_s` are
    injectable for tests."""

    def __init__(self, sampler: Sampler, battery: Callable[[], tuple[bool | None, float | None]] = battery_state,
                 low_power: Callable[[], bool | None] = read_low_power_mode,
                 cpu_share: Callable[[], float | None] = other_cpu_ratio, poll_s: float = POLL_S) -> None:
        self.sampler = sampler
        self.poll_s = poll_s
        self.measured_idle = temperatures_of(sampler.snapshot())
        self._battery = battery
        self._low_power = low_power
        self._cpu_share = cpu_share

    def idle(self, configured: float | None) -> dict[str, float]:
        """The idle temperature per sensor: `configured` for every sensor seen (now or at
        start) when given, else what each read when the daemon started."""
        if configured is None:
            return dict(self.measured_idle)
        names = set(self.measured_idle) | set(temperatures_of(self.sampler.snapshot()))
        return dict.fromkeys(sorted(names), float(configured))

    def before_rotation(self, config: Any, stop: threading.Event, log: Any = None) -> ConditionsRow:
        """Cool down as `config` asks (cooldown_max_wait_seconds, cooldown_margin_celsius,
        cooldown_idle_celsius), then record the conditions the rotation starts under."""
        idle = self.idle(config.cooldown_idle_celsius)
        margin = float(config.cooldown_margin_celsius)
        if config.cooldown_max_wait_seconds > 0 and log is not None:
            log.info("cooldown_start", max_wait_seconds=config.cooldown_max_wait_seconds, margin_celsius=margin)
        cool = wait_until_cool(lambda: temperatures_of(self.sampler.snapshot()), idle, margin,
                               config.cooldown_max_wait_seconds, stop, self.poll_s)
        if cool.state != "off" and log is not None:
            (log.warning if cool.state == "timeout" else log.info)(
                "cooldown_end", state=cool.state, seconds=round(cool.seconds, 1), hot=list(cool.hot))
        snapshot = self.sampler.snapshot()
        temperatures = temperatures_of(snapshot)
        hot = hot_sensors(temperatures, idle, margin)
        on_battery, percent = self._battery()
        return ConditionsRow(
            recorded_at=time.time(), cooldown=cool.state, cooldown_seconds=round(cool.seconds, 3),
            on_battery=on_battery, battery_percent=percent, low_power_mode=self._low_power(),
            thermal_level=snapshot.thermal_pressure, temperatures=temperatures, idle_temperatures=idle,
            margin_celsius=margin, started_hot=bool(hot) if set(temperatures) & set(idle) else None,
            hot_sensors=hot, other_cpu_ratio=self._cpu_share())
