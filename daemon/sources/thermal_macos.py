"""macOS thermal pressure without root: the notify key, NSProcessInfo, and pmset (Intel).

Three sources, best first (the sampler takes the first one that reports a level):

- `NotifyThermalSource` ("thermal_notify"): the kernel's OSThermalPressureLevel, published by
  thermald under the notify(3) key `com.apple.system.thermalpressurelevel`. Same levels as
  powermetrics' `thermal_pressure`, no root needed. Read in-process through libSystem's
  `notify_register_check`/`notify_get_state` (no process spawn per sample); falls back to
  `notifyutil -g` when ctypes cannot reach libSystem.
- `ThermalStateSource` ("thermal_state"): Foundation's NSProcessInfo.thermalState through the
  Objective-C runtime (ctypes, no PyObjC). Coarser (nominal/fair/serious/critical).
- `PmsetThermalSource` ("pmset"): `pmset -g therm` on Intel Macs (CPU_Speed_Limit, thermal
  warning level). On Apple Silicon it only prints "Note: No ... has been recorded", so it is
  reported unavailable there. Spawns pmset, so it is read at most every `min_interval_s`.

All map onto daemon/levels.py. The parsers are pure and tested on real outputs; the ctypes
readers cannot run on Linux and are exercised here only through injected stand-ins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from daemon import levels, throttle
from daemon.sources.base import Reading, Source, SourceError, SourceUnavailable
from daemon.sources.registry import SourceSpec, register

NOTIFY_KEY = "com.apple.system.thermalpressurelevel"


class ThermalParseError(ValueError):
    """Output of notifyutil or pmset that does not have the expected shape."""


# --- pure parsers ------------------------------------------------------------------------


def parse_notifyutil(text: str, key: str = NOTIFY_KEY) -> int:
    """`notifyutil -g KEY` prints "KEY VALUE"; returns VALUE (an integer level code, mapped by
    daemon/levels.from_notify_value). Raises ThermalParseError when no such line is there."""
    pattern = re.compile(r"^\s*" + re.escape(key) + r"\s+(\d{1,19})\s*$")
    for line in text.splitlines():
        if match := pattern.match(line):
            return int(match[1])
    raise ThermalParseError(f"no '{key} <value>' line in notifyutil output")


@dataclass(frozen=True)
class PmsetTherm:
    """What `pmset -g therm` reported; None where it printed "No ... has been recorded"."""

    speed_limit: int | None = None
    scheduler_limit: int | None = None
    available_cpus: int | None = None
    thermal_warning_level: int | None = None
    performance_warning_level: int | None = None

    @property
    def level(self) -> str | None:
        """Canonical level (estimated for speed limits, see daemon/levels.py)."""
        return levels.from_pmset(self.speed_limit, self.thermal_warning_level)

    @property
    def recorded(self) -> bool:
        """Whether pmset recorded a speed limit or a warning level (False on Apple Silicon)."""
        return any(v is not None for v in (self.speed_limit, self.thermal_warning_level,
                                           self.performance_warning_level))


_PMSET_KEYS = {
    "speed_limit": re.compile(r"CPU_Speed_Limit\s*=\s*(\d{1,9})"),
    "scheduler_limit": re.compile(r"CPU_Scheduler_Limit\s*=\s*(\d{1,9})"),
    "available_cpus": re.compile(r"CPU_Available_CPUs\s*=\s*(\d{1,9})"),
    "thermal_warning_level": re.compile(r"Thermal Warning Level\s*=\s*(\d{1,9})", re.I),
    "performance_warning_level": re.compile(r"Performance Warning Level\s*=\s*(\d{1,9})", re.I),
}
_PMSET_NOTE = re.compile(r"No (?:thermal warning level|performance warning level|CPU power "
                         r"status) has been recorded")


def parse_pmset_therm(text: str) -> PmsetTherm:
    """Parse `pmset -g therm` (or `-g thermlog`; the last value of each key wins). Limits are
    percentages (CPU_Speed_Limit 100 = unthrottled). Raises ThermalParseError when the text
    has neither a known key nor pmset's "No ... has been recorded" note."""
    values: dict[str, int] = {}
    for key, pattern in _PMSET_KEYS.items():
        found = pattern.findall(text)
        if found:
            values[key] = int(found[-1])
    if not values and not _PMSET_NOTE.search(text):
        raise ThermalParseError("not pmset -g therm output")
    return PmsetTherm(**values)


# --- readers -----------------------------------------------------------------------------


def _run(command: list[str], timeout: float = 5.0) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SourceError(f"{command[0]} failed: {exc}") from None
    if done.returncode != 0:
        raise SourceError(f"{command[0]} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def libsystem_notify_reader(key: str = NOTIFY_KEY) -> Callable[[], int] | None:
    """A function returning the notify state of `key` via libSystem, or None off macOS (or
    when libSystem's notify functions cannot be reached or the key cannot be registered). The
    function raises SourceError when notify_get_state fails."""
    if sys.platform != "darwin":
        return None
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("System") or "/usr/lib/libSystem.B.dylib")
        register = lib.notify_register_check
        register.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]
        register.restype = ctypes.c_uint32
        get_state = lib.notify_get_state
        get_state.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
        get_state.restype = ctypes.c_uint32
    except (OSError, AttributeError):
        return None
    token = ctypes.c_int(0)
    if register(key.encode(), ctypes.byref(token)) != 0:  # NOTIFY_STATUS_OK == 0
        return None

    def read() -> int:
        state = ctypes.c_uint64(0)
        status = get_state(token, ctypes.byref(state))
        if status != 0:
            raise SourceError(f"notify_get_state({key}) returned status {status}")
        return int(state.value)

    return read


def notifyutil_reader(key: str = NOTIFY_KEY) -> Callable[[], int] | None:
    """A function returning `key`'s notify state by running `notifyutil -g`, or None when
    notifyutil is not on PATH. The function raises SourceError when notifyutil fails or times
    out (5 s) and ThermalParseError when its output has no value."""
    if shutil.which("notifyutil") is None:
        return None
    return lambda: parse_notifyutil(_run(["notifyutil", "-g", key]), key)


class _LazyReaderSource(Source):
    """A macOS thermal level read through a reader found on first use (tests pass one in)."""

    missing = ""  # why no reader was found, for available()

    def __init__(self, reader: Callable[[], int] | None = None,
                 platform: str | None = None) -> None:
        self._reader = reader
        self._platform = platform or sys.platform
        self._probed = reader is not None

    def _find_reader(self) -> Callable[[], int] | None:
        raise NotImplementedError

    def _level(self, value: int) -> str:
        raise NotImplementedError

    def _get_reader(self) -> Callable[[], int] | None:
        if not self._probed:
            self._probed = True
            self._reader = self._find_reader()
        return self._reader

    def available(self) -> tuple[bool, str]:
        if self._reader is None and self._platform != "darwin":
            return False, f"unavailable: needs macOS (this is {self._platform})"
        if self._get_reader() is None:
            return False, f"unavailable: {self.missing}"
        return True, "ok"

    def read(self) -> Reading:
        reader = self._get_reader()
        if reader is None:
            raise SourceUnavailable(self.missing)
        try:
            value = reader()
        except ThermalParseError as exc:
            raise SourceError(str(exc)) from None
        return Reading(thermal_pressure=self._level(value))


class NotifyThermalSource(_LazyReaderSource):
    """OSThermalPressureLevel from the `com.apple.system.thermalpressurelevel` notify key."""

    name = "thermal_notify"
    missing = "neither libSystem notify nor notifyutil is reachable"

    def _find_reader(self) -> Callable[[], int] | None:
        return libsystem_notify_reader() or notifyutil_reader()

    def _level(self, value: int) -> str:
        return levels.from_notify_value(value)


def objc_thermal_state_reader() -> Callable[[], int] | None:
    """`[[NSProcessInfo processInfo] thermalState]` through the Objective-C runtime."""
    if sys.platform != "darwin":
        return None
    try:
        objc = ctypes.CDLL(ctypes.util.find_library("objc") or "/usr/lib/libobjc.A.dylib")
        ctypes.CDLL(ctypes.util.find_library("Foundation")
                    or "/System/Library/Frameworks/Foundation.framework/Foundation")
        objc.objc_getClass.restype = ctypes.c_void_p
        objc.objc_getClass.argtypes = [ctypes.c_char_p]
        objc.sel_registerName.restype = ctypes.c_void_p
        objc.sel_registerName.argtypes = [ctypes.c_char_p]
        # objc_msgSend must be called through a prototype of the exact signature (arm64).
        send_id = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
            ("objc_msgSend", objc))
        send_long = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)(
            ("objc_msgSend", objc))
        cls = objc.objc_getClass(b"NSProcessInfo")
        info = send_id(cls, objc.sel_registerName(b"processInfo")) if cls else None
        selector = objc.sel_registerName(b"thermalState")
    except (OSError, AttributeError):
        return None
    if not info or not selector:
        return None
    return lambda: int(send_long(info, selector))


class ThermalStateSource(_LazyReaderSource):
    """NSProcessInfo.thermalState (nominal/fair/serious/critical), see daemon/levels.py."""

    name = "thermal_state"
    missing = "NSProcessInfo not reachable through the objc runtime"

    def _find_reader(self) -> Callable[[], int] | None:
        return objc_thermal_state_reader()

    def _level(self, value: int) -> str:
        return levels.from_thermal_state(value)


class PmsetThermalSource(Source):
    """`pmset -g therm` (Intel Macs): pressure level (estimated) and speed-limit throttling.

    A CPU_Speed_Limit below 100 is the throttle "cpu_speed_limit" (daemon/throttle.py): active
    while it lasts, one event each time it drops below 100.

    `runner` returns pmset's output (tests pass recorded text; then the platform checks are
    skipped); `min_interval_s` (seconds, default 10) bounds how often pmset is spawned;
    `clock` is the monotonic clock for that interval.
    """

    name = "pmset"

    def __init__(self, runner: Callable[[], str] | None = None, platform: str | None = None,
                 min_interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._runner = runner or (lambda: _run(["pmset", "-g", "therm"]))
        self._platform = platform or sys.platform
        self._injected = runner is not None
        self.min_interval_s = min_interval_s
        self._clock = clock
        self._cached: PmsetTherm | None = None
        self._read_at = -float("inf")
        self._throttled = False

    def _fetch(self) -> PmsetTherm:
        now = self._clock()
        if self._cached is None or now - self._read_at >= self.min_interval_s:
            try:
                self._cached = parse_pmset_therm(self._runner())
            except ThermalParseError as exc:
                raise SourceError(str(exc)) from None
            self._read_at = now
        return self._cached

    def available(self) -> tuple[bool, str]:
        """(True, "ok"), or (False, why): not macOS, no pmset, pmset failing, or nothing
        recorded (Apple Silicon). Runs pmset unless a result younger than `min_interval_s`
        is cached."""
        if not self._injected:
            if self._platform != "darwin":
                return False, f"unavailable: needs macOS (this is {self._platform})"
            if shutil.which("pmset") is None:
                return False, "unavailable: pmset not found"
        try:
            therm = self._fetch()
        except SourceError as exc:
            return False, f"unavailable: {exc}"
        if not therm.recorded:
            return False, "unavailable: pmset records no thermal data here (Apple Silicon)"
        return True, "ok"

    def read(self) -> Reading:
        """`thermal_pressure` (the more severe of the level estimated from the speed limit and
        the thermal warning level, daemon/levels.from_pmset) and the speed-limit throttle.
        pmset runs at most once per `min_interval_s` seconds (the cached result is reused in
        between). Raises SourceError when pmset fails or its output does not parse."""
        therm = self._fetch()
        reading = Reading(thermal_pressure=therm.level)
        throttled = throttle.speed_limit_throttles(therm.speed_limit)
        if therm.speed_limit is not None:
            reading.throttle_active = frozenset({throttle.CPU_SPEED_LIMIT} if throttled else ())
        if throttled and not self._throttled:
            reading.throttle_events[throttle.CPU_SPEED_LIMIT] = 1
        self._throttled = throttled
        return reading


register(SourceSpec(name="thermal_notify", build=lambda _options: NotifyThermalSource(), platforms=("darwin",),
                    order=20, description="macOS OSThermalPressureLevel (notify key), no root"))
register(SourceSpec(name="thermal_state", build=lambda _options: ThermalStateSource(), platforms=("darwin",),
                    order=21, description="macOS NSProcessInfo.thermalState, no root"))
register(SourceSpec(name="pmset", build=lambda _options: PmsetThermalSource(), platforms=("darwin",),
                    order=22, description="macOS pmset -g therm (Intel): CPU speed limit, thermal warning level"))
