"""The NVML reader against a stand-in `pynvml` module (patched into sys.modules)."""

from __future__ import annotations

import sys
import types
from unittest import mock

import pytest

from daemon.sources.nvml import NvmlSource, decode_clock_event_reasons


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value


def fake_pynvml(gpus: list[dict], init_error: int | None = None) -> types.ModuleType:
    """A pynvml stand-in; each GPU dict maps a metric to a list of values (or an error code)."""
    module = types.ModuleType("pynvml")
    module.NVMLError = FakeNVMLError
    module.NVML_ERROR_NOT_SUPPORTED = 3
    module.NVML_TEMPERATURE_GPU = 0
    module.NVML_CLOCK_SM = 1
    module.calls = []

    def value(handle, metric):
        series = gpus[handle][metric]
        item = series.pop(0) if len(series) > 1 else series[0]
        if isinstance(item, FakeNVMLError):
            raise item
        return item

    def init():
        module.calls.append("init")
        if init_error is not None:
            raise FakeNVMLError(init_error)

    module.nvmlInit = init
    module.nvmlShutdown = lambda: module.calls.append("shutdown")
    module.nvmlDeviceGetCount = lambda: len(gpus)
    module.nvmlDeviceGetHandleByIndex = lambda i: i
    module.nvmlDeviceGetTotalEnergyConsumption = lambda h: value(h, "energy_mj")
    module.nvmlDeviceGetPowerUsage = lambda h: value(h, "power_mw")
    module.nvmlDeviceGetTemperature = lambda h, sensor: value(h, "temp_c")
    module.nvmlDeviceGetClockInfo = lambda h, clock: value(h, "sm_mhz")
    module.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=value(h, "used"))
    module.nvmlDeviceGetCurrentClocksEventReasons = lambda h: value(h, "reasons")
    return module


def gpu(**overrides) -> dict:
    base = {"energy_mj": [1_000_000], "power_mw": [250_000], "temp_c": [61], "sm_mhz": [1980],
            "used": [2 * 2**30], "reasons": [0]}
    base.update(overrides)
    return base


def test_lazy_import_and_readings_in_base_units():
    module = fake_pynvml([gpu(energy_mj=[1_000_000, 1_150_000])])
    with mock.patch.dict(sys.modules, {"pynvml": module}):
        source = NvmlSource()
        assert source.available() == (True, "ok: 1 GPU(s)")
        first = source.read()
        second = source.read()
    assert first.energy_joules == {}  # the first read only sets the baseline
    assert second.energy_joules == {"gpu0": pytest.approx(150.0)}  # mJ -> J
    # the energy counter works, so the instantaneous power read (a fallback) is skipped
    assert second.power_watts == {}
    assert second.temperatures_celsius == {"gpu0": 61.0}
    assert second.clock_hertz == {"gpu0_sm": 1.98e9}
    assert second.memory_bytes == {"gpu0_used": 2 * 2**30}


def test_throttle_events_counted_on_transitions_and_idle_ignored():
    masks = [0x1, 0x4 | 0x20, 0x4 | 0x20, 0x4, 0x4 | 0x40, 0x0, 0x4]
    source = NvmlSource(module=fake_pynvml([gpu(reasons=list(masks))]))
    events = [source.read().throttle_events for _ in range(len(masks))]
    assert events == [
        {},
        {"sw_power_cap": 1, "sw_thermal_slowdown": 1},
        {},
        {},
        {"hw_thermal_slowdown": 1},
        {},
        {"sw_power_cap": 1},
    ]


def test_two_gpus_and_unsupported_metrics_are_skipped():
    not_supported = FakeNVMLError(3)
    module = fake_pynvml([gpu(), gpu(energy_mj=[not_supported], sm_mhz=[not_supported],
                                     power_mw=[90_000])])
    source = NvmlSource(module=module)
    source.read()
    reading = source.read()
    assert set(reading.energy_joules) == {"gpu0"}
    # instantaneous power only where the energy counter is unsupported
    assert reading.power_watts == {"gpu1": 90.0}
    assert set(reading.clock_hertz) == {"gpu0_sm"}
    assert set(reading.memory_bytes) == {"gpu0_used", "gpu1_used"}


def test_counter_going_backwards_adds_nothing():
    source = NvmlSource(module=fake_pynvml([gpu(energy_mj=[5_000, 4_000, 4_500])]))
    assert [source.read().energy_joules.get("gpu0") for _ in range(3)] == [None, 0.0, 0.5]


def test_other_nvml_errors_fail_the_read():
    from daemon.sources.base import SourceError

    source = NvmlSource(module=fake_pynvml([gpu(temp_c=[FakeNVMLError(15)])]))  # GPU lost
    with pytest.raises(SourceError, match="gpu0 temperature"):
        source.read()


def test_init_failure_and_missing_module_are_unavailable():
    ok, reason = NvmlSource(module=fake_pynvml([gpu()], init_error=9)).available()
    assert not ok and "NVML init failed" in reason
    ok, reason = NvmlSource(module=fake_pynvml([])).available()
    assert not ok and "no NVIDIA GPU" in reason
    with mock.patch.dict(sys.modules, {"pynvml": None}):  # makes `import pynvml` fail
        ok, reason = NvmlSource().available()
    assert not ok and "nvidia-ml-py not installed" in reason


def test_close_shuts_nvml_down():
    module = fake_pynvml([gpu()])
    source = NvmlSource(module=module)
    source.read()
    source.close()
    source.close()
    assert module.calls == ["init", "shutdown"]


def test_older_bindings_without_clock_event_name_use_throttle_reasons():
    module = fake_pynvml([gpu()])
    del module.nvmlDeviceGetCurrentClocksEventReasons
    masks = iter([0, 0x8])
    module.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: next(masks)
    source = NvmlSource(module=module)
    source.read()
    assert source.read().throttle_events == {"hw_slowdown": 1}


def test_decode_matches_the_real_binding_constants():
    pynvml = pytest.importorskip("pynvml")
    for attribute in dir(pynvml):
        if attribute.startswith("nvmlClocksEventReason") and attribute not in (
                "nvmlClocksEventReasonAll", "nvmlClocksEventReasonNone",
                "nvmlClocksEventReasonUserDefinedClocks"):
            mask = getattr(pynvml, attribute)
            name = decode_clock_event_reasons(mask)[0]
            camel = attribute.removeprefix("nvmlClocksEventReason")
            assert name.replace("_", "") == camel.lower(), (attribute, name)
    assert decode_clock_event_reasons(0x200 | 0x1) == ["gpu_idle", "reason_0x200"]
