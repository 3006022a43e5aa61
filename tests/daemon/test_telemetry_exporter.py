"""The telemetry Collector on a real sampler fed by the NVML stand-in and RAPL on a fake tree:
the exposition has the right values and passes the real `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from daemon_process import sample_value
from fake_sources import Clock
from nvml_standin import GPU_IS_LOST, fake_pynvml, gpu, nvml_error, pynvml
from prometheus_client import CollectorRegistry, generate_latest

from daemon.metric_catalog import BY_NAME
from daemon.sampler import Sampler
from daemon.sources.base import Reading, Source
from daemon.sources.nvml import NvmlSource
from daemon.telemetry_exporter import SnapshotCollector

PROMTOOL = shutil.which("promtool")


class Rapl(Source):
    name = "rapl"

    def available(self) -> tuple[bool, str]:
        return True, "ok"

    def read(self) -> Reading:
        return Reading(energy_joules={"psys": 20.0, "package": 12.0, "dram": 3.0})


@pytest.fixture
def scrape():
    clock = Clock(1000.0)
    module = fake_pynvml([
        gpu(energy_mj=[0, 300_000, 600_000], reasons=[0x4], pcie_replay=[2], power_limit_mw=[700_000],
            event_types=[pynvml.nvmlEventTypeXidCriticalError]),
        gpu(energy_mj=[nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)], power_mw=[95_000], reasons=[0]),
        gpu(energy_mj=[0, nvml_error(GPU_IS_LOST)]),
    ])
    sampler = Sampler([NvmlSource(module=module, clock=clock), Rapl()], clock=clock, wall=lambda: 1.7e9)
    for _ in range(3):
        sampler.sample_once()
        clock.now += 1.0
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(sampler.snapshot, {name: "x" for name in BY_NAME["soakd_info"].labels}))
    return generate_latest(registry).decode()


def test_values_in_the_exposition(scrape: str) -> None:
    text = scrape
    assert sample_value(text, "soakd_power_watts", source="nvml", component="gpu0", method="counter") == 300.0
    assert sample_value(text, "soakd_power_watts", source="nvml", component="gpu1", method="instantaneous") == 95.0
    assert sample_value(text, "soakd_device_up", source="nvml", device="gpu0") == 1.0
    assert 'soakd_device_up{device="gpu2",source="nvml"} 0.0' in text
    assert sample_value(text, "soakd_power_limit_watts", source="nvml", device="gpu0") == 700.0
    assert sample_value(text, "soakd_hardware_errors_total", device="gpu0", kind="pcie_replay") == 2.0
    assert sample_value(text, "soakd_hardware_errors_total", device="gpu0", kind="xid") == 0.0
    # unsupported counters: absent with their reason, not zero
    assert 'kind="ecc_corrected_volatile"' not in text
    assert sample_value(text, "soakd_reading_unavailable", device="gpu0", reading="ecc_corrected_volatile",
                        reason="not_supported") == 1.0
    # whole-system energy: psys (20 J/tick) + the GPUs, package and dram inside psys
    assert sample_value(text, "soakd_energy_counted", source="rapl", component="psys") == 1.0
    assert sample_value(text, "soakd_energy_counted", source="rapl", component="package") == 0.0
    assert sample_value(text, "soakd_system_energy_joules_total") == pytest.approx(3 * 20.0 + 300.0 + 300.0)
    assert sample_value(text, "soakd_throttle_observable") == 1.0
    assert sample_value(text, "soakd_throttle_active", source="nvml", reason="sw_power_cap") == 1.0
    assert sample_value(text, "soakd_throttled_seconds_total", source="nvml", reason="sw_power_cap") == 2.0
    assert sample_value(text, "soakd_throttle_events_total", source="nvml", reason="sw_power_cap") == 1.0


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_check_metrics_is_clean(scrape: str) -> None:
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=scrape, capture_output=True, text=True, check=False)
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
