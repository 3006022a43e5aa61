"""Verdicts: the slow GPU named (outlier rule), on numbers and on a rotation of stand-in devices."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import fake_backends as fb
import pytest
import structlog
from prometheus_client import CollectorRegistry

from daemon.exporter import WorkloadMetrics
from daemon.journal import Journal
from daemon.recorder import Recorder
from daemon.sampler import Sampler
from daemon.verdicts import device_outliers, sustained_throughput
from workloads.phases import get_profile
from workloads.rotation import RotationPlan, RotationRunner


def test_the_slow_gpu_is_named_against_the_median() -> None:
    verdicts = device_outliers({"0": 606.0, "1": 599.0, "2": 560.0, "3": 604.0})
    median = (599.0 + 604.0) / 2
    assert [v.device for v in verdicts.values() if v.outlier] == ["2"]
    assert verdicts["2"].relative == pytest.approx(560.0 / median)
    assert verdicts["0"].relative == pytest.approx(606.0 / median) and not verdicts["0"].outlier
    # two GPUs: each against their mean (598 / 602.5 = 0.9925): an outlier only at a stricter ratio
    assert not device_outliers({"0": 598.0, "1": 607.0})["0"].outlier
    assert device_outliers({"0": 598.0, "1": 607.0}, ratio=0.995)["0"].outlier


def test_one_device_has_no_peers_and_idle_devices_do_not_count() -> None:
    assert device_outliers({"0": 600.0}) == {}
    assert device_outliers({"0": 600.0, "1": 0.0}) == {}


def test_sustained_throughput_is_the_second_half() -> None:
    # a slow first slice (warm-up transient) does not count; the last two do
    assert sustained_throughput([(10.0, 1.0), (10.0, 1.0), (20.0, 1.0), (20.0, 1.0)]) == 20.0
    assert sustained_throughput([(30.0, 2.0)]) == 15.0
    assert sustained_throughput([]) is None


def test_a_rotation_on_three_stand_in_gpus_names_the_slow_one(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    fb.register(monkeypatch, **{fb.MultiDeviceBackend.name: fb.MultiDeviceBackend})
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    plan = RotationPlan(profile=get_profile("ci", {"phase_seconds": 1.2, "slice_seconds": 0.3}),
                        backends=[fb.MultiDeviceBackend.name], phases=["matmul"], precisions=["fp32"],
                        cpu_baseline="off", in_process=True)
    sampler = Sampler([])
    sampler.sample_once()
    with closing(Journal(tmp_path / "journal.sqlite3")) as journal:
        recorder = Recorder(journal, metrics, sampler, structlog.get_logger())
        rotation = journal.start_rotation("ci", "test", plan.backends[0])
        recorder.begin(rotation, plan)
        RotationRunner(plan, recorder.on_event).run()
        slices = journal.slices(rotation_id=rotation)
        events = journal.events(kind="device_outlier")
        verdicts = {row["device"]: row for row in journal.verdicts(rotation_id=rotation)}
    assert sorted({row["device"] for row in slices}) == ["0", "1", "2"]
    assert all(row["steps"] > 0 for row in slices)
    (outlier,) = events
    assert '"device": "2"' in outlier["detail"]
    labels = {"phase": "matmul", "backend": fb.MultiDeviceBackend.name, "precision": "fp32"}
    assert registry.get_sample_value("soakd_device_outlier", {**labels, "device": "2"}) == 1
    assert registry.get_sample_value("soakd_device_outlier", {**labels, "device": "0"}) == 0
    assert registry.get_sample_value("soakd_device_relative_throughput_ratio", {**labels, "device": "2"}) < 0.95
    for device in ("0", "1", "2"):  # every workload series carries its device
        assert registry.get_sample_value("soakd_steps_total", {**labels, "device": device}) > 0
    # the stability score, slowdowns and history work per device, each row with its outlier verdict
    assert sorted(verdicts) == ["0", "1", "2"]
    assert [verdicts[d]["device_outlier"] for d in ("0", "1", "2")] == [0, 0, 1]
    assert verdicts["2"]["device_relative"] < 0.95
    for device, row in verdicts.items():
        assert len(row["loops"]) == sum(s["device"] == device for s in slices) >= 2
        assert row["stability"] == pytest.approx(min(row["loops"]) / max(row["loops"]))
        assert row["run_key"] == next(s["run_key"] for s in slices if s["device"] == device)
        assert registry.get_sample_value("soakd_stability_ratio", {**labels, "device": device}) == \
            pytest.approx(row["stability"])
