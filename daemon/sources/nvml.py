"""NVIDIA GPUs through NVML (`nvidia-ml-py`, imported lazily as `pynvml`), isolated per GPU and
per reading.

Per GPU i (device / component / sensor name `gpu{i}`), each reading on its own:
- energy: nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded, Volta+), reported
  as the delta since the previous read, in J. A counter that goes backwards (driver reload) is
  a reset: nothing is added and `Reading.counter_resets` says so.
- power: nvmlDeviceGetPowerUsage (mW), an instantaneous value, read only for a GPU whose energy
  counter is not supported (the exporter labels it `method="instantaneous"`).
- temperature: nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU), °C.
- clock: nvmlDeviceGetClockInfo(NVML_CLOCK_SM), MHz -> Hz, domain `gpu{i}_sm`.
- memory: nvmlDeviceGetMemoryInfo().used, kind `gpu{i}_used`.
- clock-event reasons: nvmlDeviceGetCurrentClocksEventReasons; drivers before 535 lack that
  symbol (the binding raises NVMLError_FunctionNotFound), so the older
  nvmlDeviceGetCurrentClocksThrottleReasons is used instead. The bit mask is decoded to names;
  the throttle reasons among them (daemon/throttle.py) are the GPU's throttle state, and one
  turning on counts one throttle event.
- every `hardware_interval_s` (default 10 s; these move rarely and each call costs CPU):
  the enforced power limit (nvmlDeviceGetEnforcedPowerLimit, mW -> W), and the hardware error
  counters DCGM's diagnostics watch: volatile ECC errors, corrected and uncorrected
  (nvmlDeviceGetTotalEccErrors), the PCIe replay counter (nvmlDeviceGetPcieReplayCounter), and
  row remapping (nvmlDeviceGetRemappedRows: correctable/uncorrectable remapped rows as counters,
  pending/failure as conditions).
- XID critical errors: an NVML event set registered for nvmlEventTypeXidCriticalError,
  drained (without waiting) at every read; counted per GPU since soakd started, each with its
  XID code in the event detail.

Fault isolation: an error on one reading of one GPU drops that reading for that GPU with a
counted reason (`Reading.issues`), never the other readings or GPUs. NOT_SUPPORTED,
NO_PERMISSION and FUNCTION_NOT_FOUND (with no older call to fall back to) are lasting: the
reading is skipped from then on and stays absent with its reason (an unsupported error counter
is absent, not zero). A GPU whose handle cannot be opened is down with its reason while the
others are read; a GPU lost mid-run (GPU_IS_LOST, "fallen off the bus") is marked down with its
reason, its energy baseline is dropped (no energy is invented across the outage), and both are
retried every `reopen_s`.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from daemon.sources.base import (
    DeviceStatus,
    HardwareErrorEvent,
    Reading,
    ReadingIssue,
    Source,
    SourceUnavailable,
    error_slug,
)
from daemon.sources.counters import counter_step
from daemon.sources.registry import SourceSpec, register
from daemon.throttle import throttles

# Bit -> name, from nvml.h's nvmlClocksEventReason* / nvmlClocksThrottleReason* constants.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
CLOCK_EVENT_CALLS = ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons")
LASTING = frozenset({"not_supported", "no_permission", "function_not_found"})
HARDWARE_COUNTERS = ("ecc_corrected_volatile", "ecc_uncorrected_volatile", "pcie_replay",
                     "remapped_rows_correctable", "remapped_rows_uncorrectable")
XID_EVENT_TYPE = 0x8  # nvmlEventTypeXidCriticalError
MAX_EVENTS_PER_READ = 256


def decode_clock_event_reasons(mask: int) -> list[str]:
    """Names of the set bits; unknown bits become `reason_0x...`."""
    names = []
    for bit in range(64):
        flag = 1 << bit
        if mask & flag:
            names.append(CLOCK_EVENT_REASONS.get(flag, f"reason_{flag:#x}"))
    return names


class _GpuLost(Exception):
    """GPU_IS_LOST on any reading: the GPU is down until it can be reopened."""


@dataclass
class _Gpu:
    """Per-GPU state, kept across reads."""

    index: int
    handle: Any = None
    down: str | None = None  # why the GPU is down (None: up)
    retry_at: float = 0.0
    unsupported: dict[str, tuple[str, str]] = field(default_factory=dict)  # reading -> (slug, detail)
    last_energy: tuple[int, float] | None = None  # (mJ, clock)
    active_reasons: set[str] = field(default_factory=set)
    counters: dict[str, int] = field(default_factory=dict)  # hardware error counters, last values
    conditions: dict[str, bool] = field(default_factory=dict)
    power_limit_watts: float | None = None
    xid_total: int | None = None  # None: XID events not watched on this GPU
    took: int = 0  # readings taken this tick
    failed: str | None = None  # the first passing failure this tick

    @property
    def name(self) -> str:
        """The device, component and sensor name: `gpu{index}`."""
        return f"gpu{self.index}"


class NvmlSource(Source):
    """All NVIDIA GPUs on the machine, one NVML session for the source's lifetime.

    `module` stands in for `pynvml` (tests pass a fake); `hardware_interval_s` (seconds,
    default 10) spaces the power-limit and error-counter reads; `reopen_s` (seconds, default
    60) is how long a GPU that could not be opened or was lost stays down before it is tried
    again; `clock` is the monotonic clock for both.
    """

    name = "nvml"

    def __init__(self, module: ModuleType | None = None, hardware_interval_s: float = 10.0,
                 reopen_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._nvml: Any = module
        self.hardware_interval_s = hardware_interval_s
        self.reopen_s = reopen_s
        self._clock = clock
        self._initialised = False
        self._gpus: list[_Gpu] = []
        self._missing: set[str] = set()  # NVML functions the driver (or binding) lacks
        self._events: Any = None  # the XID event set
        self._xid_reason: tuple[str, str] | None = None
        self._hardware_due = 0.0

    # -- session ---------------------------------------------------------------------------

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise SourceUnavailable(f"unavailable: nvidia-ml-py not installed ({exc})") from None
        return self._nvml

    def _const(self, name: str, default: int) -> int:
        return int(getattr(self._nvml, name, default))

    def _init(self) -> None:
        if self._initialised:
            return
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise SourceUnavailable(f"unavailable: NVML init failed: {exc}") from None
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            raise SourceUnavailable(f"unavailable: NVML device query failed: {exc}") from None
        if count == 0:
            nvml.nvmlShutdown()
            raise SourceUnavailable("unavailable: no NVIDIA GPU found")
        self._gpus = [_Gpu(i) for i in range(count)]
        for gpu in self._gpus:
            self._open(gpu)
        self._initialised = True
        self._watch_xid()

    def _open(self, gpu: _Gpu) -> None:
        nvml = self._nvml
        try:
            gpu.handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        except nvml.NVMLError as exc:
            gpu.handle = None
            gpu.down = f"{error_slug(exc)}: cannot open the device handle: {exc}"
            gpu.retry_at = self._clock() + self.reopen_s
            return
        gpu.down = None
        gpu.last_energy = None

    def _watch_xid(self) -> None:
        nvml = self._nvml
        event_type = self._const("nvmlEventTypeXidCriticalError", XID_EVENT_TYPE)
        if self._wait_function() is None:
            self._xid_reason = ("function_not_found", "the binding has no nvmlEventSetWait")
            return
        try:
            self._events = nvml.nvmlEventSetCreate()
        except (nvml.NVMLError, AttributeError) as exc:
            self._xid_reason = (_slug(exc), f"cannot create an NVML event set: {exc}")
            return
        for gpu in self._gpus:
            if gpu.handle is None:
                continue
            try:
                supported = int(nvml.nvmlDeviceGetSupportedEventTypes(gpu.handle))
                if not supported & event_type:
                    gpu.unsupported["xid"] = ("not_supported", "XID critical error events not supported")
                    continue
                nvml.nvmlDeviceRegisterEvents(gpu.handle, event_type, self._events)
            except (nvml.NVMLError, AttributeError) as exc:
                gpu.unsupported["xid"] = (_slug(exc), f"cannot register for XID events: {exc}")
                continue
            gpu.xid_total = 0

    def available(self) -> tuple[bool, str]:
        """Up when NVML initialises and finds a GPU (even if some GPUs cannot be opened)."""
        try:
            self._init()
        except SourceUnavailable as exc:
            return False, str(exc)
        opened = sum(1 for g in self._gpus if g.handle is not None)
        if opened == len(self._gpus):
            return True, f"ok: {opened} GPU(s)"
        return True, f"ok: {opened} of {len(self._gpus)} GPU(s) opened"

    # -- one reading -------------------------------------------------------------------------

    def _call(self, gpu: _Gpu, reading: str, out: Reading, names: tuple[str, ...], *args: Any) -> Any:
        """The first of the NVML functions `names` that exists, called on this GPU; None (with
        an issue in `out`) when the reading cannot be taken. Raises _GpuLost on GPU_IS_LOST."""
        if reading in gpu.unsupported:
            return None
        nvml = self._nvml
        for name in names:
            function = None if name in self._missing else getattr(nvml, name, None)
            if function is None:
                self._missing.add(name)
                continue
            try:
                value = function(gpu.handle, *args)
            except nvml.NVMLError as exc:
                slug = error_slug(exc)
                if slug == "function_not_found":
                    self._missing.add(name)
                    continue
                if slug == "gpu_is_lost":
                    raise _GpuLost(f"{slug}: {exc}") from None
                if slug in LASTING:
                    gpu.unsupported[reading] = (slug, f"{name}: {exc}")
                    return None
                out.issues.append(ReadingIssue(gpu.name, reading, slug, f"{name}: {exc}"))
                gpu.failed = gpu.failed or f"{slug}: {name}: {exc}"
                return None
            gpu.took += 1
            return value
        gpu.unsupported[reading] = ("function_not_found", f"the driver has none of {', '.join(names)}")
        return None

    def _read_gpu(self, gpu: _Gpu, out: Reading, now: float, hardware: bool) -> None:
        name = gpu.name
        energy = self._call(gpu, "energy", out, ("nvmlDeviceGetTotalEnergyConsumption",))
        if energy is not None:
            previous, gpu.last_energy = gpu.last_energy, (int(energy), now)
            if previous is not None:
                step = counter_step(previous[0], int(energy), None, now - previous[1], joules_per_unit=1e-3)
                if step.kind == "reset":
                    out.counter_resets[name] = 1
                out.energy_joules[name] = step.delta / 1000.0
        if "energy" in gpu.unsupported:  # instantaneous power only where there is no counter
            power = self._call(gpu, "power", out, ("nvmlDeviceGetPowerUsage",))
            if power is not None:
                out.power_watts[name] = power / 1000.0
        temperature = self._call(gpu, "temperature", out, ("nvmlDeviceGetTemperature",),
                                 self._const("NVML_TEMPERATURE_GPU", 0))
        if temperature is not None:
            out.temperatures_celsius[name] = float(temperature)
        sm_mhz = self._call(gpu, "sm_clock", out, ("nvmlDeviceGetClockInfo",), self._const("NVML_CLOCK_SM", 1))
        if sm_mhz is not None:
            out.clock_hertz[f"{name}_sm"] = sm_mhz * 1e6
        memory = self._call(gpu, "memory", out, ("nvmlDeviceGetMemoryInfo",))
        if memory is not None:
            out.memory_bytes[f"{name}_used"] = int(memory.used)
        mask = self._call(gpu, "clock_events", out, CLOCK_EVENT_CALLS)
        if mask is not None:
            active = throttles(decode_clock_event_reasons(int(mask)))
            for reason in active - gpu.active_reasons:
                out.throttle_events[reason] = out.throttle_events.get(reason, 0) + 1
            gpu.active_reasons = set(active)
        if hardware:
            self._read_hardware(gpu, out)

    def _read_hardware(self, gpu: _Gpu, out: Reading) -> None:
        limit = self._call(gpu, "power_limit", out, ("nvmlDeviceGetEnforcedPowerLimit",))
        if limit is not None:
            gpu.power_limit_watts = limit / 1000.0
        volatile = self._const("NVML_VOLATILE_ECC", 0)
        for kind, error_type in (("ecc_corrected_volatile", self._const("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0)),
                                 ("ecc_uncorrected_volatile", self._const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1))):
            self._counter(gpu, out, kind, self._call(gpu, kind, out, ("nvmlDeviceGetTotalEccErrors",),
                                                     error_type, volatile))
        self._counter(gpu, out, "pcie_replay", self._call(gpu, "pcie_replay", out,
                                                          ("nvmlDeviceGetPcieReplayCounter",)))
        rows = self._call(gpu, "row_remapping", out, ("nvmlDeviceGetRemappedRows",))
        if rows is not None:
            correctable, uncorrectable, pending, failure = (int(v) for v in rows)
            self._counter(gpu, out, "remapped_rows_correctable", correctable)
            self._counter(gpu, out, "remapped_rows_uncorrectable", uncorrectable)
            gpu.conditions = {"row_remap_pending": bool(pending), "row_remap_failure": bool(failure)}

    @staticmethod
    def _counter(gpu: _Gpu, out: Reading, kind: str, value: Any) -> None:
        if value is None:
            return
        current = int(value)
        previous = gpu.counters.get(kind)
        gpu.counters[kind] = current
        if previous is not None and current > previous:
            out.hardware_events.append(HardwareErrorEvent(gpu.name, kind, current - previous, current))

    def _wait_function(self) -> Any:
        return getattr(self._nvml, "nvmlEventSetWait_v2", None) or getattr(self._nvml, "nvmlEventSetWait", None)

    def _drain_xid(self, out: Reading) -> None:
        """Take every XID event waiting in the event set, without waiting for more."""
        nvml = self._nvml
        wait = self._wait_function()
        if self._events is None or wait is None:
            return
        by_index = {g.index: g for g in self._gpus}
        for _ in range(MAX_EVENTS_PER_READ):
            try:
                data = wait(self._events, 0)
            except nvml.NVMLError as exc:
                if error_slug(exc) != "timeout":
                    out.issues.append(ReadingIssue("all", "xid", error_slug(exc), f"nvmlEventSetWait: {exc}"))
                return
            try:
                index = int(nvml.nvmlDeviceGetIndex(data.device))
            except (nvml.NVMLError, AttributeError):
                index = -1
            gpu = by_index.get(index)
            if gpu is None or gpu.xid_total is None:
                continue
            gpu.xid_total += 1
            out.hardware_events.append(HardwareErrorEvent(gpu.name, "xid", 1, gpu.xid_total,
                                                          f"xid {int(data.eventData)}"))

    def _state(self, gpu: _Gpu, out: Reading) -> None:
        """What this GPU's reading carries every time: health, lasting issues, counters."""
        if gpu.down is None and gpu.took == 0 and gpu.failed is not None:
            # every reading tried this tick failed: down for this tick, with the first reason
            out.devices[gpu.name] = DeviceStatus(False, gpu.failed)
        else:
            out.devices[gpu.name] = DeviceStatus(gpu.down is None, gpu.down or "ok")
        for reading, (slug, detail) in sorted(gpu.unsupported.items()):
            out.issues.append(ReadingIssue(gpu.name, reading, slug, detail, lasting=True))
        if "xid" not in gpu.unsupported and gpu.xid_total is None and self._xid_reason is not None:
            out.issues.append(ReadingIssue(gpu.name, "xid", *self._xid_reason, lasting=True))
        out.hardware_errors.update({(gpu.name, k): v for k, v in gpu.counters.items()})
        if gpu.xid_total is not None:
            out.hardware_errors[(gpu.name, "xid")] = gpu.xid_total
        out.hardware_conditions.update({(gpu.name, k): v for k, v in gpu.conditions.items()})
        if gpu.power_limit_watts is not None:
            out.power_limit_watts[gpu.name] = gpu.power_limit_watts

    def read(self) -> Reading:
        """One reading of every GPU; never raises for one GPU or one reading failing. Raises
        SourceUnavailable when nvidia-ml-py is missing or NVML cannot initialise or finds no
        GPU (tried again at the next read)."""
        self._init()
        out = Reading()
        now = self._clock()
        hardware = now >= self._hardware_due
        if hardware:
            self._hardware_due = now + self.hardware_interval_s
        sees_clock_events = False
        for gpu in self._gpus:
            gpu.took, gpu.failed = 0, None
            if gpu.down is not None:
                if now < gpu.retry_at:
                    self._state(gpu, out)
                    continue
                self._open(gpu)
                if gpu.down is not None:
                    self._state(gpu, out)
                    continue
            try:
                self._read_gpu(gpu, out, now, hardware)
            except _GpuLost as exc:
                self._lose(gpu, str(exc), out, now)
            if gpu.down is None and "clock_events" not in gpu.unsupported:
                sees_clock_events = True
            self._state(gpu, out)
        self._drain_xid(out)
        if sees_clock_events:
            out.throttle_active = frozenset().union(*(g.active_reasons for g in self._gpus if g.down is None))
        return out

    def _lose(self, gpu: _Gpu, reason: str, out: Reading, now: float) -> None:
        """GPU_IS_LOST: drop this GPU's readings of this tick, mark it down, retry later."""
        name = gpu.name
        for table in (out.energy_joules, out.power_watts, out.temperatures_celsius):
            table.pop(name, None)
        out.clock_hertz.pop(f"{name}_sm", None)
        out.memory_bytes.pop(f"{name}_used", None)
        gpu.down, gpu.retry_at = reason, now + self.reopen_s
        gpu.last_energy = None
        gpu.active_reasons = set()
        out.issues.append(ReadingIssue(name, "device", "gpu_is_lost", reason))

    def active_reasons(self) -> dict[str, list[str]]:
        """Throttle reasons active at the last read, per GPU (for probes and logs)."""
        return {g.name: sorted(g.active_reasons) for g in self._gpus}

    def close(self) -> None:
        """Free the XID event set and shut NVML down. Safe to call twice."""
        if self._initialised:
            self._initialised = False
            nvml = self._nvml
            if self._events is not None:
                with contextlib.suppress(nvml.NVMLError, AttributeError):
                    nvml.nvmlEventSetFree(self._events)
                self._events = None
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()


def _slug(exc: BaseException) -> str:
    return "function_not_found" if isinstance(exc, AttributeError) else error_slug(exc)


register(SourceSpec(
    name="nvml", description="NVIDIA GPUs: energy, temperature, clocks, throttle reasons, hardware errors",
    build=lambda _options: NvmlSource(), platforms=("linux", "win32"), order=30))
