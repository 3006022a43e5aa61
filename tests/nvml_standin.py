"""A stand-in `pynvml` for the NVML tests: the real binding's error classes and constants, with
the device functions replaced by scripted values.

Each GPU is a dict: metric -> list of values (one per call, the last one repeats); an item that
is an exception is raised. A metric missing from the dict raises the real binding's
NVMLError_NotSupported, as a GPU that lacks the feature does. Functions named in `missing`
raise NVMLError_FunctionNotFound, as the real binding does when the driver library lacks the
symbol (drivers before 535 and nvmlDeviceGetCurrentClocksEventReasons).
"""

from __future__ import annotations

import ctypes
import types
from collections.abc import Iterable
from typing import Any

import pytest

pynvml = pytest.importorskip("pynvml")  # nvidia-ml-py: a soakd dependency on Linux and Windows


def nvml_error(code: int) -> Exception:
    """The real binding's exception for an NVML return code (NVMLError_GpuIsLost for 15...)."""
    return pynvml.NVMLError(code)


NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED
GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
UNKNOWN = pynvml.NVML_ERROR_UNKNOWN
FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND

_FUNCTIONS = {
    "nvmlDeviceGetTotalEnergyConsumption": "energy_mj",
    "nvmlDeviceGetPowerUsage": "power_mw",
    "nvmlDeviceGetTemperature": "temp_c",
    "nvmlDeviceGetClockInfo": "sm_mhz",
    "nvmlDeviceGetCurrentClocksEventReasons": "reasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons": "reasons",
    "nvmlDeviceGetEnforcedPowerLimit": "power_limit_mw",
    "nvmlDeviceGetPcieReplayCounter": "pcie_replay",
    "nvmlDeviceGetRemappedRows": "remapped_rows",
    "nvmlDeviceGetSupportedEventTypes": "event_types",
}


def gpu(**overrides: Any) -> dict[str, list[Any]]:
    """A healthy GPU with an energy counter and no hardware error counters (not supported)."""
    base: dict[str, list[Any]] = {"energy_mj": [1_000_000], "power_mw": [250_000], "temp_c": [61],
                                  "sm_mhz": [1980], "used": [2 * 2**30], "reasons": [0]}
    base.update({k: v if isinstance(v, list) else [v] for k, v in overrides.items()})
    return base


def fake_pynvml(gpus: list[dict[str, list[Any]]], init_error: int | None = None,
                handle_errors: dict[int, int] | None = None, missing: Iterable[str] = ()) -> Any:
    """The stand-in module; `module.calls` records init/shutdown, `module.xid_queue` holds
    (gpu index, xid code) events waiting to be drained."""
    module: Any = types.ModuleType("pynvml")
    for name in dir(pynvml):
        if name.startswith(("NVML_", "NVMLError", "nvmlEventType", "nvmlClocksEventReason")):
            setattr(module, name, getattr(pynvml, name))
    module.calls = []
    module.xid_queue = []
    missing = set(missing)

    def value(handle: int, metric: str) -> Any:
        series = gpus[handle].get(metric)
        if series is None:
            raise nvml_error(NOT_SUPPORTED)
        item = series.pop(0) if len(series) > 1 else series[0]
        if isinstance(item, Exception):
            raise item
        return item

    def device_function(name: str, metric: str) -> Any:
        def call(handle: int, *_args: Any) -> Any:
            if name in missing:
                raise nvml_error(FUNCTION_NOT_FOUND)
            return value(handle, metric)
        return call

    def init() -> None:
        module.calls.append("init")
        if init_error is not None:
            raise nvml_error(init_error)

    def handle_by_index(index: int) -> int:
        if index in (handle_errors or {}):
            raise nvml_error((handle_errors or {})[index])
        return index

    def ecc(handle: int, error_type: int, counter_type: int) -> Any:
        assert counter_type == pynvml.NVML_VOLATILE_ECC
        kind = "ecc_corrected" if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED else "ecc_uncorrected"
        return value(handle, kind)

    def wait(event_set: Any, timeout_ms: int) -> Any:
        assert event_set == "event-set" and timeout_ms == 0
        if not module.xid_queue:
            raise nvml_error(pynvml.NVML_ERROR_TIMEOUT)
        index, xid = module.xid_queue.pop(0)
        return types.SimpleNamespace(device=index, eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=xid)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: module.calls.append("shutdown")
    module.nvmlDeviceGetCount = lambda: len(gpus)
    module.nvmlDeviceGetHandleByIndex = handle_by_index
    module.nvmlDeviceGetIndex = lambda handle: handle
    module.nvmlDeviceGetMemoryInfo = lambda h: _memory_info(value(h, "used"))
    module.nvmlDeviceGetTotalEccErrors = ecc
    module.nvmlEventSetCreate = lambda: "event-set"
    module.nvmlEventSetFree = lambda s: module.calls.append("event_set_free")
    module.nvmlDeviceRegisterEvents = lambda handle, types_, event_set: None
    module.nvmlEventSetWait_v2 = wait
    for name, metric in _FUNCTIONS.items():
        setattr(module, name, device_function(name, metric))
    return module


class _MemoryStruct(ctypes.Structure):
    """What the real binding returns: a ctypes struct (c_nvmlMemory_t), not a plain object."""

    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def _memory_info(used: int) -> _MemoryStruct:
    return _MemoryStruct(total=used * 4, free=used * 3, used=used)
