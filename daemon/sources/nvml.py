"""NVIDIA GPUs through NVML (`nvidia-ml-py`, imported lazily as `pynvml`).

Per GPU i, component/sensor/domain names are `gpu{i}`:
- energy: nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded, Volta+), reported
  as the delta since the previous read, in J. A counter that goes backwards (driver reload)
  contributes nothing for that interval.
- power: nvmlDeviceGetPowerUsage (mW), an instantaneous value, used by the sampler only for
  GPUs without an energy counter.
- temperature: nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU), °C.
- clock: nvmlDeviceGetClockInfo(NVML_CLOCK_SM), MHz -> Hz, domain `gpu{i}_sm`.
- memory: nvmlDeviceGetMemoryInfo().used, kind `gpu{i}_used`.
- clock-event (throttle) reasons: nvmlDeviceGetCurrentClocksEventReasons (older drivers:
  ...ClocksThrottleReasons), a bit mask decoded to names. An event is counted when a reason
  turns on (off->on transition), so a reason held for an hour counts once. `gpu_idle` is not
  a throttle and is never counted.

A metric a GPU does not support (NVML_ERROR_NOT_SUPPORTED) is skipped from then on.
"""

from __future__ import annotations

import contextlib
import importlib
from types import ModuleType
from typing import Any

from daemon.sources.base import Reading, Source, SourceError, SourceUnavailable

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
NOT_COUNTED = frozenset({"gpu_idle"})


def decode_clock_event_reasons(mask: int) -> list[str]:
    """Names of the set bits; unknown bits become `reason_0x...`."""
    names = []
    for bit in range(64):
        flag = 1 << bit
        if mask & flag:
            names.append(CLOCK_EVENT_REASONS.get(flag, f"reason_{flag:#x}"))
    return names


class NvmlSource(Source):
    """All NVIDIA GPUs on the machine, one NVML session for the source's lifetime."""

    name = "nvml"

    def __init__(self, module: ModuleType | None = None) -> None:
        self._nvml: Any = module
        self._initialised = False
        self._handles: list[Any] = []
        self._last_energy_mj: dict[int, int] = {}
        self._active_reasons: dict[int, set[str]] = {}
        self._unsupported: set[tuple[int, str]] = set()

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise SourceUnavailable(f"unavailable: nvidia-ml-py not installed ({exc})") \
                    from None
        return self._nvml

    def _init(self) -> None:
        if self._initialised:
            return
        nvml = self._module()
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise SourceUnavailable(f"unavailable: NVML init failed: {exc}") from None
        try:
            count = nvml.nvmlDeviceGetCount()
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except nvml.NVMLError as exc:
            nvml.nvmlShutdown()
            raise SourceUnavailable(f"unavailable: NVML device query failed: {exc}") from None
        if not self._handles:
            nvml.nvmlShutdown()
            raise SourceUnavailable("unavailable: no NVIDIA GPU found")
        self._initialised = True

    def available(self) -> tuple[bool, str]:
        try:
            self._init()
        except SourceUnavailable as exc:
            return False, str(exc)
        return True, f"ok: {len(self._handles)} GPU(s)"

    def _call(self, index: int, what: str, fn: Any, *args: Any) -> Any:
        """fn(*args), or None when this GPU does not support `what`."""
        if (index, what) in self._unsupported:
            return None
        nvml = self._nvml
        try:
            return fn(*args)
        except nvml.NVMLError as exc:
            if getattr(exc, "value", None) == nvml.NVML_ERROR_NOT_SUPPORTED:
                self._unsupported.add((index, what))
                return None
            raise SourceError(f"gpu{index} {what}: {exc}") from None

    def _reasons_fn(self) -> Any:
        nvml = self._nvml
        return getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)

    def read(self) -> Reading:
        self._init()
        nvml = self._nvml
        reading = Reading()
        for i, handle in enumerate(self._handles):
            gpu = f"gpu{i}"
            energy = self._call(i, "energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            if energy is not None:
                previous = self._last_energy_mj.get(i)
                self._last_energy_mj[i] = energy
                if previous is not None:
                    reading.energy_joules[gpu] = max(0, energy - previous) / 1000.0
            # Instantaneous power is only a fallback (the sampler derives power from the energy
            # counter), and each NVML call costs ~1 ms of CPU: skip it when the counter works.
            power = None if energy is not None else self._call(i, "power", nvml.nvmlDeviceGetPowerUsage,
                                                                handle)
            if power is not None:
                reading.power_watts[gpu] = power / 1000.0
            temperature = self._call(i, "temperature", nvml.nvmlDeviceGetTemperature, handle,
                                     nvml.NVML_TEMPERATURE_GPU)
            if temperature is not None:
                reading.temperatures_celsius[gpu] = float(temperature)
            sm_mhz = self._call(i, "sm_clock", nvml.nvmlDeviceGetClockInfo, handle,
                                nvml.NVML_CLOCK_SM)
            if sm_mhz is not None:
                reading.clock_hertz[f"{gpu}_sm"] = sm_mhz * 1e6
            memory = self._call(i, "memory", nvml.nvmlDeviceGetMemoryInfo, handle)
            if memory is not None:
                reading.memory_bytes[f"{gpu}_used"] = int(memory.used)
            reasons_fn = self._reasons_fn()
            mask = None if reasons_fn is None else self._call(i, "clock_events", reasons_fn,
                                                              handle)
            if mask is not None:
                active = set(decode_clock_event_reasons(int(mask)))
                for reason in active - self._active_reasons.get(i, set()) - NOT_COUNTED:
                    reading.throttle_events[reason] = reading.throttle_events.get(reason, 0) + 1
                self._active_reasons[i] = active
        return reading

    def active_reasons(self) -> dict[str, list[str]]:
        """Clock-event reasons seen at the last read, per GPU (for probes and logs)."""
        return {f"gpu{i}": sorted(r) for i, r in self._active_reasons.items()}

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            with contextlib.suppress(self._nvml.NVMLError):
                self._nvml.nvmlShutdown()
