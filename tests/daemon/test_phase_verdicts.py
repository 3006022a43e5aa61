"""A phase's verdicts in the daemon with stand-in telemetry: the real Sampler (with its throttle book
and energy history) fed by a stand-in GPU source on a hand-moved clock, loops fed to PhaseJudge as
the recorder feeds it, verdicts journalled and exported by record_verdicts."""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path

import pytest
import structlog
from fake_sources import Clock
from prometheus_client import CollectorRegistry

from daemon.exporter import WorkloadMetrics
from daemon.journal import Journal
from daemon.loop_telemetry import DeviceKeys, LoopWindow, device_keys
from daemon.phase_verdicts import PhaseJudge, SeriesVerdict, VerdictSettings, journal_history, record_verdicts
from daemon.sampler import Sampler
from daemon.sources.base import Reading, Source
from workloads.phases import get_profile
from workloads.protocol import RunConfig
from workloads.rotation import SliceContext
from workloads.runner import SliceResult

SPEC = get_profile("ci").matmul
RUN = RunConfig.for_spec(SPEC, "cuda", "bf16")
LABELS = {"phase": "matmul", "backend": "cuda", "precision": "bf16", "device": "0"}
LOOP_S = 10  # sampler ticks (1 s) per loop


class StandInGpu(Source):
    """NVML as the sampler sees it, for one GPU whose state the test sets: energy at `watts`, SM
    clock, temperature, throttle reasons and the enforced power limit."""

    name = "nvml"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.watts = 400.0
        self.limit = 700.0
        self.clock_hz = 1.98e9
        self.reasons: set[str] = set()
        self.last: float | None = None

    def available(self) -> tuple[bool, str]:
        return True, "ok: stand-in GPU"

    def read(self) -> Reading:
        now = self.clock()
        joules = 0.0 if self.last is None else self.watts * (now - self.last)
        self.last = now
        return Reading(energy_joules={"gpu0": joules}, temperatures_celsius={"gpu0": 60.0},
                       clock_hertz={"gpu0_sm": self.clock_hz}, throttle_active=frozenset(self.reasons),
                       power_limit_watts={"gpu0": self.limit})


class Bench:
    """A judge, a sampler on the stand-in GPU and a clock; `loop()` runs one 10 s slice."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.gpu = StandInGpu(self.clock)
        self.sampler = Sampler([self.gpu], clock=self.clock)
        self.sampler.sample_once()
        self.judge = PhaseJudge(self.sampler)
        self.judge.begin_phase()
        self.slice_id = 0

    def loop(self, flop_per_second: float) -> None:
        self.slice_id += 1
        context = SliceContext("matmul", "cuda", "cuda", "bf16", SPEC, device="0", slice_id=self.slice_id)
        self.judge.slice_started(context, self.slice_id)
        start = self.clock.now
        for _ in range(LOOP_S):
            self.clock.now += 1.0
            self.sampler.sample_once()
            self.judge.running(self.slice_id)
        end = self.sampler.sample_once()
        steps = round(flop_per_second * LOOP_S / SPEC.flop_per_step())
        result = SliceResult(SPEC, "cuda", "bf16", slice_id=self.slice_id, run=RUN, steps=steps,
                             seconds=float(LOOP_S), segments=[(start, self.clock.now)])
        self.judge.slice_ended(context, result, end, self.sampler.energy_over(result.segments))

    def verdict(self, **settings: float) -> SeriesVerdict:
        (verdict,) = self.judge.judge("matmul", "bf16", "ci", VerdictSettings(**settings))  # type: ignore[arg-type]
        return verdict


RATE = 1e12


def test_a_thermal_throttle_with_a_falling_clock_explains_the_drop() -> None:
    bench = Bench()
    bench.loop(RATE)
    bench.loop(RATE)
    bench.gpu.reasons = {"hw_thermal_slowdown"}
    bench.gpu.clock_hz = 1.5e9
    bench.loop(0.75 * RATE)
    verdict = bench.verdict()
    (slowdown,) = verdict.slowdowns
    assert slowdown.index == 2 and slowdown.drop == pytest.approx(0.25, abs=1e-3)
    assert slowdown.explained
    reasons = " | ".join(slowdown.explanations)
    assert "throttle hw_thermal_slowdown: 0% -> " in reasons and "clock fell 24%" in reasons
    # the readings the loop saw came from the sampler: throttled time, mean clock, power from energy
    assert slowdown.loop.throttle_share("hw_thermal_slowdown") >= 0.9
    assert slowdown.loop.clock_hertz == pytest.approx(1.5e9)
    assert slowdown.loop.power_watts == pytest.approx(400.0)
    assert slowdown.loop.power_limit_watts == 700.0 and slowdown.loop.temperature_celsius == 60.0
    assert verdict.score.score == pytest.approx(0.75, abs=1e-3) and verdict.score.passed is False


def test_a_drop_with_steady_telemetry_is_unexplained_journalled_and_exported(tmp_path: Path) -> None:
    bench = Bench()
    for rate in (RATE, RATE, 0.99 * RATE, 0.8 * RATE):
        bench.loop(rate)
    verdict = bench.verdict()
    (slowdown,) = verdict.slowdowns
    assert slowdown.index == 3 and not slowdown.explained
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    with closing(Journal(tmp_path / "journal.sqlite3")) as journal:
        rotation = journal.start_rotation("ci", "test", "cuda")
        record_verdicts([verdict], profile="ci", rotation_id=rotation, journal=journal, metrics=metrics,
                        log=structlog.get_logger())
        (row,) = journal.verdicts(rotation_id=rotation)
        (event,) = journal.events(kind="slowdown")
    assert row["slowdowns"] == 1 and row["unexplained_slowdowns"] == 1 and row["passed"] == 0
    assert row["stability"] == pytest.approx(0.8, abs=1e-3) and row["run_key"] == RUN.key
    assert len(row["loops"]) == len(row["loop_readings"]) == 4
    assert row["loop_readings"][3]["clock_hertz"] == pytest.approx(1.98e9)
    detail = json.loads(event["detail"])
    assert detail["explained"] is False and detail["loop"] == 3 and detail["device"] == "0"
    assert detail["readings"]["loop"]["power_watts"] == pytest.approx(400.0)
    assert registry.get_sample_value("soakd_slowdowns_total", {**LABELS, "explained": "false"}) == 1
    assert registry.get_sample_value("soakd_slowdowns_total", {**LABELS, "explained": "true"}) is None
    assert registry.get_sample_value("soakd_stability_ratio", LABELS) == pytest.approx(0.8, abs=1e-3)
    assert registry.get_sample_value("soakd_stability_passed", LABELS) == 0
    assert registry.get_sample_value("soakd_stability_pass_mark_ratio") == 0.97


def test_a_gpu_at_its_power_cap_from_the_start_is_not_explained_by_the_cap() -> None:
    """An H200 at full load: sw_power_cap active and power at the limit from the first second. A
    later drop with the cap, clock and power unchanged is unexplained."""
    bench = Bench()
    bench.gpu.reasons = {"sw_power_cap"}
    bench.gpu.watts = 699.0
    bench.gpu.clock_hz = 1.755e9
    for rate in (RATE, RATE, 0.85 * RATE):
        bench.loop(rate)
    (slowdown,) = bench.verdict().slowdowns
    assert slowdown.warm.at_cap and slowdown.loop.at_cap
    assert slowdown.warm.throttle_share("sw_power_cap") > 0.9
    assert not slowdown.explained, slowdown.explanations


def test_the_cap_lowered_mid_phase_explains_the_drop() -> None:
    bench = Bench()
    bench.gpu.reasons, bench.gpu.watts = {"sw_power_cap"}, 699.0
    bench.loop(RATE)
    bench.loop(RATE)
    bench.gpu.limit, bench.gpu.watts = 500.0, 499.0
    bench.loop(0.8 * RATE)
    (slowdown,) = bench.verdict().slowdowns
    assert slowdown.explanations == ("power limit moved: 700 -> 500 W",)


def test_settings_reach_the_verdict() -> None:
    bench = Bench()
    for rate in (RATE, RATE, 0.96 * RATE):
        bench.loop(rate)
    assert bench.verdict().slowdowns == [] and bench.verdict().score.passed is False
    strict = bench.verdict(slowdown_threshold=0.03, pass_mark=0.95)
    assert len(strict.slowdowns) == 1 and strict.score.passed is True


def test_another_run_configuration_starts_the_loops_over() -> None:
    bench = Bench()
    bench.loop(RATE)
    bench.loop(RATE)
    other = RunConfig.for_spec(SPEC, "cuda", "bf16", technique="cuda_graph")
    context = SliceContext("matmul", "cuda", "cuda", "bf16", SPEC, device="0", slice_id=99)
    bench.judge.slice_started(context, 99)
    bench.clock.now += 1
    end = bench.sampler.sample_once()
    result = SliceResult(SPEC, "cuda", "bf16", slice_id=99, run=other, steps=100, seconds=1.0,
                         segments=[(bench.clock.now - 1, bench.clock.now)])
    bench.judge.slice_ended(context, result, end, None)
    verdict = bench.verdict()
    assert verdict.run_key == other.key and len(verdict.loops) == 1


def test_a_rotation_below_its_history_band_is_a_regression(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = WorkloadMetrics(registry)
    with closing(Journal(tmp_path / "journal.sqlite3")) as journal:
        for index, rate in enumerate((1.00, 1.02, 0.98, 1.01, 0.99, 1.00)):  # six earlier rotations
            earlier = Bench()
            for _ in range(4):
                earlier.loop(rate * RATE)
            rotation = journal.start_rotation("ci", "test", "cuda")
            record_verdicts(earlier.judge.judge("matmul", "bf16", "ci", VerdictSettings(), journal_history(journal)),
                            profile="ci", rotation_id=rotation, journal=journal, metrics=metrics,
                            log=structlog.get_logger())
            assert journal.verdicts(rotation_id=rotation)[0]["history_rotations"] == (index if index >= 5 else 0)
        now = Bench()
        for _ in range(4):
            now.loop(0.9 * RATE)
        (verdict,) = now.judge.judge("matmul", "bf16", "ci", VerdictSettings(), journal_history(journal))
        rotation = journal.start_rotation("ci", "test", "cuda")
        record_verdicts([verdict], profile="ci", rotation_id=rotation, journal=journal, metrics=metrics,
                        log=structlog.get_logger())
        (row,) = journal.verdicts(rotation_id=rotation)
        # another profile is another history: nothing to compare with
        (elsewhere,) = now.judge.judge("matmul", "bf16", "light", VerdictSettings(), journal_history(journal))
    assert verdict.band is not None and verdict.band.rotations == 6
    assert verdict.band.low == pytest.approx(0.98125 * RATE, rel=1e-4)
    assert verdict.band.median == pytest.approx(1.0 * RATE, rel=1e-4)
    assert verdict.regression is True and row["regression"] == 1
    assert row["history_low"] == pytest.approx(verdict.band.low) and row["history_rotations"] == 6
    assert registry.get_sample_value("soakd_throughput_regression", LABELS) == 1
    assert registry.get_sample_value("soakd_history_flop_per_second", {**LABELS, "bound": "median"}) == \
        pytest.approx(RATE, rel=1e-4)
    assert registry.get_sample_value("soakd_history_rotations", LABELS) == 6
    assert registry.get_sample_value("soakd_sustained_flop_per_second", LABELS) == pytest.approx(0.9 * RATE, rel=1e-4)
    assert elsewhere.band is None and elsewhere.regression is None


class RaplPackage(StandInGpu):
    """A RAPL package zone: the stand-in GPU's energy alone, under the package's name."""

    name = "rapl"

    def read(self) -> Reading:
        return Reading(energy_joules={"package": super().read().energy_joules["gpu0"]})


def test_a_cpu_loop_takes_the_whole_system_power_and_has_no_cap() -> None:
    """The CPU has no energy counter of its own in soakd's sources: its loop's power is the whole
    system's (RAPL package here, at 50 W) over its measured time, and without a limit there is no
    cap to be at."""
    clock = Clock()
    package = RaplPackage(clock)
    package.watts = 50.0
    sampler = Sampler([package], clock=clock)
    sampler.sample_once()
    window = LoopWindow(sampler.snapshot(), device_keys("cpu", "0"))
    start = clock.now
    for _ in range(5):
        clock.now += 1.0
        window.add(sampler.sample_once())
    end = sampler.sample_once()
    telemetry = window.finish(end, sampler.energy_over([(start, clock.now)]), 5.0)
    assert telemetry.power_watts == pytest.approx(50.0)
    assert telemetry.power_limit_watts is None and telemetry.at_cap is None
    assert telemetry.clock_hertz is None and telemetry.throttle_known is False and telemetry.seconds == 5.0
    assert device_keys("cuda", "3") == DeviceKeys(("nvml", "gpu3_sm"), ("nvml", "gpu3"), ("nvml", "gpu3"),
                                                  ("nvml", "gpu3"))
    assert device_keys("coreml-ane", "0").energy == ("powermetrics", "ane")
