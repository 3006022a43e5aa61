"""The NVML reader against a stand-in `pynvml` (the real binding's error classes, scripted
devices): readings, per-GPU and per-reading fault isolation, the driver-before-535 fallback
(field report), hardware error counters and XID events."""

from __future__ import annotations

import json
import sys
from unittest import mock

import pytest
from fake_sources import Clock
from nvml_standin import (
    FUNCTION_NOT_FOUND,
    GPU_IS_LOST,
    NOT_SUPPORTED,
    UNKNOWN,
    fake_pynvml,
    gpu,
    nvml_error,
    pynvml,
)

from daemon.sampler import Sampler
from daemon.sources.nvml import NvmlSource, decode_clock_event_reasons


def source_for(module, **kwargs) -> NvmlSource:
    return NvmlSource(module=module, **kwargs)


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
    assert second.devices["gpu0"].up and second.throttle_active == frozenset()


def test_throttle_events_counted_on_transitions_of_throttle_reasons_only():
    # gpu_idle, applications_clocks_setting, sync_boost, display_clock_setting are not throttles
    masks = [0x1, 0x4 | 0x20, 0x4 | 0x20, 0x4, 0x4 | 0x40, 0x0, 0x4, 0x2 | 0x10 | 0x100]
    source = source_for(fake_pynvml([gpu(reasons=list(masks))]))
    readings = [source.read() for _ in range(len(masks))]
    assert [r.throttle_events for r in readings] == [
        {},
        {"sw_power_cap": 1, "sw_thermal_slowdown": 1},
        {},
        {},
        {"hw_thermal_slowdown": 1},
        {},
        {"sw_power_cap": 1},
        {},
    ]
    assert [sorted(r.throttle_active or ()) for r in readings] == [
        [], ["sw_power_cap", "sw_thermal_slowdown"], ["sw_power_cap", "sw_thermal_slowdown"],
        ["sw_power_cap"], ["hw_thermal_slowdown", "sw_power_cap"], [], ["sw_power_cap"], []]


def test_two_gpus_and_unsupported_metrics_are_skipped_with_their_reason():
    not_supported = nvml_error(NOT_SUPPORTED)
    module = fake_pynvml([gpu(), gpu(energy_mj=[not_supported], sm_mhz=[not_supported], power_mw=[90_000])])
    source = source_for(module)
    source.read()
    reading = source.read()
    assert set(reading.energy_joules) == {"gpu0"}
    # instantaneous power only where the energy counter is unsupported
    assert reading.power_watts == {"gpu1": 90.0}
    assert set(reading.clock_hertz) == {"gpu0_sm"}
    assert set(reading.memory_bytes) == {"gpu0_used", "gpu1_used"}
    lasting = {(i.device, i.reading, i.reason) for i in reading.issues if i.lasting}
    assert {("gpu1", "energy", "not_supported"), ("gpu1", "sm_clock", "not_supported")} <= lasting


def test_counter_going_backwards_is_a_reset_and_adds_nothing():
    clock = Clock()
    source = source_for(fake_pynvml([gpu(energy_mj=[5_000, 4_000, 4_500])]), clock=clock)
    out = []
    for _ in range(3):
        out.append(source.read())
        clock.now += 1.0
    assert [r.energy_joules.get("gpu0") for r in out] == [None, 0.0, 0.5]
    assert [r.counter_resets for r in out] == [{}, {"gpu0": 1}, {}]


def test_one_reading_of_one_gpu_failing_drops_only_that_reading():
    module = fake_pynvml([gpu(energy_mj=[0, 100_000], temp_c=[nvml_error(UNKNOWN)]),
                          gpu(energy_mj=[0, 200_000])])
    source = source_for(module)
    source.read()
    reading = source.read()
    assert reading.energy_joules == {"gpu0": pytest.approx(100.0), "gpu1": pytest.approx(200.0)}
    assert reading.temperatures_celsius == {"gpu1": 61.0}
    assert set(reading.clock_hertz) == {"gpu0_sm", "gpu1_sm"}
    passing = [(i.device, i.reading, i.reason, i.lasting) for i in reading.issues if not i.lasting]
    assert passing == [("gpu0", "temperature", "unknown", False)]
    assert reading.devices["gpu0"].up and reading.devices["gpu1"].up


def test_one_gpu_of_five_failing_its_handle_is_skipped_and_reported():
    module = fake_pynvml([gpu(energy_mj=[0, 50_000]) for _ in range(5)], handle_errors={3: UNKNOWN})
    source = source_for(module)
    assert source.available() == (True, "ok: 4 of 5 GPU(s) opened")
    source.read()
    reading = source.read()
    assert set(reading.energy_joules) == {"gpu0", "gpu1", "gpu2", "gpu4"}
    assert not reading.devices["gpu3"].up
    assert reading.devices["gpu3"].reason.startswith("unknown: cannot open the device handle")
    assert sum(s.up for s in reading.devices.values()) == 4


def test_gpu_lost_after_the_first_tick_while_another_keeps_its_full_energy():
    clock = Clock()
    lost = nvml_error(GPU_IS_LOST)
    module = fake_pynvml([gpu(energy_mj=[0, 100_000, 200_000, 300_000]),
                          gpu(energy_mj=[0, lost], temp_c=[70, lost])])
    sampler = Sampler([source_for(module, clock=clock, reopen_s=3600)], clock=clock)
    snaps = []
    for _ in range(4):
        snaps.append(sampler.sample_once())
        clock.now += 1.0
    last = snaps[-1]
    assert last.energy_joules[("nvml", "gpu0")] == pytest.approx(300.0)  # every tick of gpu0 counted
    assert last.energy_joules.get(("nvml", "gpu1"), 0.0) == 0.0  # nothing invented for the lost GPU
    assert last.devices[("nvml", "gpu1")].up is False
    assert last.devices[("nvml", "gpu1")].reason == "gpu_is_lost: GPU is lost"
    assert last.devices[("nvml", "gpu0")].up and last.health["nvml"].up
    assert "down: gpu1 (gpu_is_lost: GPU is lost)" in last.health["nvml"].reason
    assert ("nvml", "gpu1", "temperature") not in last.temperatures_celsius
    downs = [e for e in last.events if e.kind == "device_down"]
    assert [(e.device, e.detail["reason"]) for e in downs] == [("gpu1", "gpu_is_lost: GPU is lost")]


def test_lost_gpu_is_retried_and_starts_a_new_baseline():
    clock = Clock()
    module = fake_pynvml([gpu(energy_mj=[0, nvml_error(GPU_IS_LOST), 50_000, 60_000])])
    source = source_for(module, clock=clock, reopen_s=10)
    readings = []
    for step in (0, 1, 5, 11, 12):
        clock.now = 100.0 + step
        readings.append(source.read())
    assert [r.devices["gpu0"].up for r in readings] == [True, False, False, True, True]
    assert [r.energy_joules.get("gpu0") for r in readings] == [None, None, None, None, pytest.approx(10.0)]


def test_field_report_driver_before_535_falls_back_to_the_throttle_reasons_call(field_reports_dir):
    report = json.loads((field_reports_dir / "nvml_driver-before-535.json").read_text())
    gpus = [gpu(energy_mj=g["energy_mj"], temp_c=g["temp_c"], sm_mhz=g["sm_mhz"], used=g["mem_used"],
                reasons=g["clock_events"]) for g in report["gpus"]]
    module = fake_pynvml(gpus, missing=report["missing_symbols"])
    assert hasattr(module, "nvmlDeviceGetCurrentClocksEventReasons")  # the binding has it ...
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):  # ... the driver does not
        module.nvmlDeviceGetCurrentClocksEventReasons(0)
    clock = Clock()
    source = source_for(module, clock=clock)
    source.read()
    clock.now += 1.0
    tick2 = source.read()
    assert tick2.energy_joules == {"gpu0": pytest.approx(400.0)}
    assert tick2.temperatures_celsius == {"gpu0": 65.0}
    assert tick2.clock_hertz == {"gpu0_sm": pytest.approx(1.74e9)}
    assert tick2.throttle_active == frozenset({"sw_power_cap"})  # 0x4 via the old call
    assert not [i for i in tick2.issues if i.reading == "clock_events"]


def test_a_missing_driver_function_with_no_fallback_is_skipped_with_the_reason():
    module = fake_pynvml([gpu()], missing={"nvmlDeviceGetCurrentClocksEventReasons",
                                           "nvmlDeviceGetCurrentClocksThrottleReasons"})
    reading = source_for(module).read()
    [issue] = [i for i in reading.issues if i.reading == "clock_events"]
    assert (issue.reason, issue.lasting) == ("function_not_found", True)
    assert reading.throttle_active is None  # this GPU cannot see throttling
    assert reading.temperatures_celsius == {"gpu0": 61.0}


def test_older_bindings_without_clock_event_name_use_throttle_reasons():
    module = fake_pynvml([gpu(reasons=[0, 0x8])])
    del module.nvmlDeviceGetCurrentClocksEventReasons
    source = source_for(module)
    source.read()
    assert source.read().throttle_events == {"hw_slowdown": 1}


def test_hardware_error_counters_events_and_power_limit():
    clock = Clock()
    module = fake_pynvml([
        gpu(pcie_replay=[3, 7], remapped_rows=[(0, 0, 0, 0), (2, 1, 1, 0)],
            power_limit_mw=[700_000], event_types=[pynvml.nvmlEventTypeXidCriticalError]),
        gpu(ecc_corrected=[10, 12], ecc_uncorrected=[0]),  # one value per slow read
    ])
    source = source_for(module, clock=clock, hardware_interval_s=10)
    first = source.read()
    clock.now += 1.0
    second = source.read()  # hardware counters are not due again yet
    module.xid_queue.append((0, 79))
    clock.now += 10.0
    third = source.read()
    assert first.hardware_events == [] and second.hardware_events == []
    assert first.power_limit_watts == {"gpu0": 700.0}
    assert first.hardware_errors == {("gpu0", "pcie_replay"): 3, ("gpu0", "remapped_rows_correctable"): 0,
                                     ("gpu0", "remapped_rows_uncorrectable"): 0, ("gpu0", "xid"): 0,
                                     ("gpu1", "ecc_corrected_volatile"): 10, ("gpu1", "ecc_uncorrected_volatile"): 0}
    assert second.hardware_errors == first.hardware_errors  # the state is carried between slow reads
    events = {(e.device, e.kind): (e.count, e.total, e.detail) for e in third.hardware_events}
    assert events == {("gpu0", "pcie_replay"): (4, 7, ""), ("gpu0", "remapped_rows_correctable"): (2, 2, ""),
                      ("gpu0", "remapped_rows_uncorrectable"): (1, 1, ""), ("gpu0", "xid"): (1, 1, "xid 79"),
                      ("gpu1", "ecc_corrected_volatile"): (2, 12, "")}
    assert third.hardware_conditions == {("gpu0", "row_remap_pending"): True, ("gpu0", "row_remap_failure"): False}


def test_an_unsupported_error_counter_is_absent_with_its_reason_not_zero():
    module = fake_pynvml([gpu(pcie_replay=[0])])  # no ECC, no row remapping, no XID events
    reading = source_for(module).read()
    assert reading.hardware_errors == {("gpu0", "pcie_replay"): 0}
    unsupported = {i.reading: i.reason for i in reading.issues if i.lasting}
    assert unsupported == {"ecc_corrected_volatile": "not_supported", "ecc_uncorrected_volatile": "not_supported",
                           "row_remapping": "not_supported", "xid": "not_supported", "power_limit": "not_supported"}


def test_init_failure_and_missing_module_are_unavailable():
    ok, reason = source_for(fake_pynvml([gpu()], init_error=pynvml.NVML_ERROR_DRIVER_NOT_LOADED)).available()
    assert not ok and "NVML init failed" in reason
    ok, reason = source_for(fake_pynvml([])).available()
    assert not ok and "no NVIDIA GPU" in reason
    with mock.patch.dict(sys.modules, {"pynvml": None}):  # makes `import pynvml` fail
        ok, reason = NvmlSource().available()
    assert not ok and "nvidia-ml-py not installed" in reason


def test_close_frees_the_event_set_and_shuts_nvml_down():
    module = fake_pynvml([gpu()])
    source = source_for(module)
    source.read()
    source.close()
    source.close()
    assert module.calls == ["init", "event_set_free", "shutdown"]


def test_decode_matches_the_real_binding_constants():
    for attribute in dir(pynvml):
        if attribute.startswith("nvmlClocksEventReason") and attribute not in (
                "nvmlClocksEventReasonAll", "nvmlClocksEventReasonNone",
                "nvmlClocksEventReasonUserDefinedClocks"):
            mask = getattr(pynvml, attribute)
            name = decode_clock_event_reasons(mask)[0]
            camel = attribute.removeprefix("nvmlClocksEventReason")
            assert name.replace("_", "") == camel.lower(), (attribute, name)
    assert decode_clock_event_reasons(0x200 | 0x1) == ["gpu_idle", "reason_0x200"]


def test_error_slugs_come_from_the_real_error_classes():
    from daemon.sources.base import error_slug

    assert error_slug(nvml_error(GPU_IS_LOST)) == "gpu_is_lost"
    assert error_slug(nvml_error(FUNCTION_NOT_FOUND)) == "function_not_found"
    assert error_slug(nvml_error(NOT_SUPPORTED)) == "not_supported"
    assert error_slug(PermissionError(13, "denied")) == "permission_denied"


def test_a_gpu_whose_every_reading_fails_this_tick_is_down_for_the_tick():
    broken = nvml_error(UNKNOWN)
    module = fake_pynvml([gpu(), gpu(energy_mj=[0, broken, 10_000], temp_c=[61, broken, 61],
                                     sm_mhz=[1980, broken, 1980], used=[1, broken, 1], reasons=[0, broken, 0])])
    source = source_for(module)
    readings = [source.read() for _ in range(3)]
    assert [r.devices["gpu1"].up for r in readings] == [True, False, True]
    assert readings[1].devices["gpu1"].reason.startswith("unknown: nvmlDeviceGetTotalEnergyConsumption")
    assert all(r.devices["gpu0"].up for r in readings)
