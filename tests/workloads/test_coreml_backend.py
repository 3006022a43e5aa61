"""The Core ML backends: probe, precision rules, the macOS prediction path with a stand-in
model (buffer reuse, timing, reference check), MLComputePlan placement and the fallbacks.

Core ML prediction and MLComputePlan need macOS; here the compile and load steps are
replaced by stand-ins (the conversion and the cache are real), so everything around the
predict() call runs as it would on a Mac.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from standin_compute_plan import plan_of_package

from workloads.backends import coreml_backend, fallback_chain, get_backend
from workloads.backends.base import Availability, BackendFailure
from workloads.backends.coreml_backend import (
    BACKEND_COMPUTE_UNITS,
    CoreMLBackend,
    CoreMLWorkload,
    check_compute_units,
)
from workloads.coreml_convert import entry_name, program_ops, read_conversion_log
from workloads.measure import CheckState, measure
from workloads.models import build
from workloads.phases import PhaseSpec, get_profile
from workloads.placement import ane_share, variant_placements
from workloads.protocol import Check, Prepared, RunSlice, SliceDone, Steps, WorkerEvent
from workloads.reference import compute_reference, tolerance
from workloads.rotation import RotationPlan, RotationRunner
from workloads.timing import SyncClock

pytest.importorskip("coremltools")

CI = get_profile("ci")
STEP_SLEEP_S = 0.002


@pytest.fixture(scope="session")
def cache_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SOAKD_CACHE_DIR for the session, so each phase converts once."""
    return tmp_path_factory.mktemp("soakd-cache")


@pytest.fixture
def cache(cache_base: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOAKD_CACHE_DIR", str(cache_base))
    return cache_base


class TorchStandIn:
    """A stand-in for CompiledMLModel: runs the phase's torch model on the given arrays.

    Records what it was handed, so a test can check that the same buffers come back every
    step, and sleeps a little so that step timing has something to measure.
    """

    def __init__(self, spec: PhaseSpec, seed: int, sleep_s: float = STEP_SLEEP_S,
                 broken: bool = False) -> None:
        self.model, _ = build(spec, seed)
        self.sleep_s = sleep_s
        self.broken = broken
        self.calls = 0
        self.dict_ids: set[int] = set()
        self.array_ids: set[tuple[str, int]] = set()
        self.snapshots: list[dict[str, np.ndarray]] = []

    def predict(self, data: dict[str, Any]) -> dict[str, Any]:
        # coremltools' binding wraps float32/float64/int32 arrays without a copy and replaces
        # float16 ones in the dict with float32 copies: the buffers must already be float32.
        for array in data.values():
            assert isinstance(array, np.ndarray) and array.dtype == np.float32
        self.calls += 1
        self.dict_ids.add(id(data))
        self.array_ids.update((name, id(array)) for name, array in data.items())
        if self.calls == 1:
            self.snapshots.append({k: v.copy() for k, v in data.items()})
        time.sleep(self.sleep_s)
        # Like a float16 model: inputs rounded to float16 inside Core ML, the float16 output
        # returned to Python as a float32 copy.
        rounded = (torch.from_numpy(a.astype(np.float16).astype(np.float32)) for a in data.values())
        with torch.inference_mode():
            out = self.model(*rounded)
        array = out.numpy().astype(np.float16).astype(np.float32)
        if self.broken:
            array = np.zeros_like(array)
        return {"output": array}


@dataclass
class StandIns:
    compiles: list[Path] = field(default_factory=list)
    loads: list[tuple[Path, str]] = field(default_factory=list)
    predictors: list[TorchStandIn] = field(default_factory=list)
    broken: bool = False

    def compile(self, package: Path, destination: Path) -> None:
        self.compiles.append(destination)
        shutil.copytree(package, destination)

    def loader(self, spec: PhaseSpec) -> Any:
        def load(path: Path, units: str) -> TorchStandIn:
            assert path.name == "model.mlmodelc" and path.is_dir()
            self.loads.append((path, units))
            predictor = TorchStandIn(spec, 0, broken=self.broken)
            self.predictors.append(predictor)
            return predictor

        return load


@pytest.fixture
def on_a_mac(monkeypatch: pytest.MonkeyPatch, cache: Path) -> StandIns:
    """Pretend the Core ML runtime is here; compile and load are stand-ins."""
    fakes = StandIns()
    monkeypatch.setattr(coreml_backend, "runtime_availability", lambda: Availability.yes())
    monkeypatch.setattr(coreml_backend, "compile_package", fakes.compile)

    def load(path: Path, units: str) -> TorchStandIn:
        spec = CI.spec(path.parent.name.split("-")[0])
        return fakes.loader(spec)(path, units)

    monkeypatch.setattr(coreml_backend, "load_compiled_model", load)
    return fakes


# --- probe, names, precision -------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="the Linux answer")
@pytest.mark.parametrize("name", list(BACKEND_COMPUTE_UNITS))
def test_probe_says_core_ml_needs_macos(name: str) -> None:
    availability = get_backend(name).available()
    assert not availability.ok
    assert availability.reason == f"Core ML prediction needs macOS 13.0+ (this is {__import__('platform').system()})"
    with pytest.raises(BackendFailure) as caught:
        get_backend(name).prepare(CI.spec("matmul"), "fp16", 0)
    assert caught.value.reason == "unavailable"


def test_backends_map_to_compute_units() -> None:
    assert {name: get_backend(name).compute_units  # type: ignore[attr-defined]
            for name in BACKEND_COMPUTE_UNITS} == {
        "coreml-ane": "CPU_AND_NE", "coreml-gpu": "CPU_AND_GPU",
        "coreml-cpu": "CPU_ONLY", "coreml-all": "ALL",
    }
    assert fallback_chain("coreml-ane") == ["coreml-ane", "mps", "cpu"]


def test_unknown_compute_unit_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"unknown Core ML compute unit 'CPU_AND_NPU' "
                                         r"\(choose from CPU_ONLY, CPU_AND_GPU, CPU_AND_NE, ALL\)"):
        check_compute_units("CPU_AND_NPU")
    with pytest.raises(ValueError, match="unknown Core ML backend 'coreml-npu'"):
        CoreMLBackend("coreml-npu")


@pytest.mark.parametrize("name", list(BACKEND_COMPUTE_UNITS))
def test_precision_rules(name: str) -> None:
    backend = CoreMLBackend(name)
    assert backend.supports("fp16").ok
    bf16 = backend.supports("bf16")
    assert not bf16.ok and "bf16" in bf16.reason
    fp32 = backend.supports("fp32")
    if name == "coreml-ane":
        assert not fp32.ok
        assert "an FP32 model on CPU_AND_NE silently runs on the CPU" in fp32.reason
    else:
        assert fp32.ok


def _heavy_imports_of(modules: str) -> list[str]:
    """Which of torch and coremltools a fresh interpreter has after importing `modules`."""
    code = (f"import sys, {modules}; "
            "print(','.join(m for m in ('torch', 'coremltools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    return [m for m in out.stdout.strip().split(",") if m]


def test_importing_the_backend_does_not_import_coremltools() -> None:
    assert "coremltools" not in _heavy_imports_of(
        "workloads.backends.coreml_backend, workloads.coreml_convert, workloads.coreml_overhead")
    # The placement records are for the daemon too (report, metrics): no torch either.
    assert _heavy_imports_of("workloads.placement, workloads.phases") == []


# --- the prediction path with a stand-in model ---------------------------------------------


def test_prepare_reports_cache_compile_load_and_placement(on_a_mac: StandIns) -> None:
    spec = CI.spec("conv")
    backend = CoreMLBackend("coreml-ane")

    first = backend.prepare(spec, "fp16", 0)
    assert isinstance(first, CoreMLWorkload)
    info = first.info
    assert info["compute_units"] == "CPU_AND_NE"
    assert info["model_precision"] == "fp16" and info["io_dtype"] == "float16"
    assert info["input_buffer_dtype"] == "float32"
    assert info["cache_hit"] is False and info["conversion_seconds"] > 0
    assert info["compiled_now"] is True and info["compile_seconds"] >= 0
    assert info["cold_compile"] is True and "cold_compile_load_seconds" in info
    assert info["load_seconds"] >= 0
    assert info["compute_plan"] == "unknown"
    assert "MLComputePlan needs macOS 14.4+" in info["compute_plan_reason"]
    assert "ANE" not in first.device_label and "placement unknown" in first.device_label
    assert on_a_mac.loads == [(Path(info["compiled_model_path"]), "CPU_AND_NE")]
    first.close()

    second = backend.prepare(spec, "fp16", 0)  # the next slice: a new worker, same cache
    info2 = second.info
    assert info2["cache_hit"] is True and info2["conversion_seconds"] is None
    assert info2["cached_conversion_seconds"] == pytest.approx(info["conversion_seconds"])
    assert info2["compiled_now"] is False and info2["compile_seconds"] == 0.0
    assert info2["cold_compile"] is False and "warm_load_seconds" in info2
    assert info2["compiled_model_path"] == info["compiled_model_path"]  # the fixed path
    assert len(on_a_mac.compiles) == 1

    # Other compute units on the same compiled path: their first load is cold again.
    third = CoreMLBackend("coreml-gpu").prepare(spec, "fp16", 0)
    assert third.info["cold_compile"] is True and third.info["compute_units"] == "CPU_AND_GPU"
    assert len(on_a_mac.compiles) == 1


def test_steps_reuse_buffers_are_timed_and_checked_against_the_reference(
        on_a_mac: StandIns) -> None:
    spec = CI.spec("attention")
    workload = CoreMLBackend("coreml-ane").prepare(spec, "fp16", 0)
    assert isinstance(workload, CoreMLWorkload)
    assert isinstance(workload.clock, SyncClock)
    reference = compute_reference(spec, 0)
    events: list[WorkerEvent] = []
    # One timed segment (a long flush interval), so the checks fall on known steps.
    request = RunSlice(slice_id=1, duration_s=None, max_steps=6, warmup_steps=2, check_every=3,
                       flush_interval_s=600.0)
    measure(workload, request, events.append, state=CheckState(reference=reference))

    predictor = on_a_mac.predictors[-1]
    steps = [e for e in events if isinstance(e, Steps)]
    durations = [d for e in steps for d in e.durations]
    assert len(durations) == 6
    assert all(d >= STEP_SLEEP_S for d in durations)
    # Every predict got the same dict and the same arrays, never rewritten between steps.
    assert predictor.calls == 2 + 6
    assert len(predictor.dict_ids) == 1
    assert len(predictor.array_ids) == len(spec.input_shapes())
    for name, array in workload.inputs.items():
        assert array.flags["C_CONTIGUOUS"] and array.dtype == np.float32
        assert array.shape == spec.input_shapes()[name]
        np.testing.assert_array_equal(array, predictor.snapshots[0][name])
    # The reference check ran on the warm-up output, then after the segment (6 >= 3 steps
    # since the last check), and passed.
    checks = [e for e in events if isinstance(e, Check)]
    assert [c.step for c in checks] == [0, 6]
    assert all(c.ok and c.tolerance == tolerance(spec, "fp16") for c in checks)
    assert all(0 < c.relative_error < 1e-2 for c in checks)
    done = events[-1]
    assert isinstance(done, SliceDone) and done.steps == 6


def test_wrong_outputs_are_counted_as_mismatches(on_a_mac: StandIns) -> None:
    on_a_mac.broken = True
    spec = CI.spec("matmul")
    workload = CoreMLBackend("coreml-cpu").prepare(spec, "fp16", 0)
    events: list[WorkerEvent] = []
    request = RunSlice(slice_id=1, duration_s=None, max_steps=2, warmup_steps=1, check_every=1)
    measure(workload, request, events.append, state=CheckState(reference=compute_reference(spec, 0)))
    checks = [e for e in events if isinstance(e, Check)]
    assert checks and not any(c.ok for c in checks)


def test_output_sample_is_float64_sample_zero_by_output_name() -> None:
    class Two:
        def predict(self, data: dict[str, Any]) -> dict[str, Any]:
            return {"aux": np.zeros((3, 2)), "output": np.arange(12, dtype=np.float16).reshape(3, 4)}

    workload = CoreMLWorkload(backend="coreml-cpu", device_label="x", precision="fp16",
                              clock=SyncClock(lambda: None), predictor=Two(),
                              inputs={"x": np.zeros(1)}, output_name="output")
    sample = workload.output_sample()
    assert sample.dtype == torch.float64 and tuple(sample.shape) == (1, 4)
    assert sample.tolist() == [[0.0, 1.0, 2.0, 3.0]]

    workload.output_name = "missing"
    with pytest.raises(BackendFailure) as caught:
        workload.step()
    assert caught.value.reason == "runtime_error" and "'missing'" in caught.value.detail
    workload.close()
    assert workload.predictor is None and workload.inputs == {}


def test_a_load_failure_is_a_recorded_failure(on_a_mac: StandIns,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, units: str) -> Any:
        raise RuntimeError("Error computing NN outputs")

    monkeypatch.setattr(coreml_backend, "load_compiled_model", refuse)
    with pytest.raises(BackendFailure) as caught:
        CoreMLBackend("coreml-all").prepare(CI.spec("matmul"), "fp16", 0)
    assert caught.value.reason == "runtime_error"
    assert "with ALL failed" in caught.value.detail and "Error computing" in caught.value.detail


def test_macos_version_refusals_name_what_is_needed_and_what_is_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coreml_backend.platform, "system", lambda: "Linux")
    for host, minimum, subject, reason in [
        (None, coreml_backend.MIN_MACOS, "Core ML prediction", "Core ML prediction needs macOS 13.0+ (this is Linux)"),
        ((12, 6), coreml_backend.MIN_MACOS, "Core ML prediction",
         "Core ML prediction needs macOS 13.0+ (this is macOS 12.6)"),
        ((14, 2), coreml_backend.COMPUTE_PLAN_MACOS, "MLComputePlan",
         "MLComputePlan needs macOS 14.4+ (this is macOS 14.2)"),
    ]:
        monkeypatch.setattr(coreml_backend, "_host_macos", lambda host=host: host)
        refusal = coreml_backend._needs_macos(minimum, subject)
        assert refusal is not None and not refusal.ok and refusal.reason == reason
    for host in [(13, 0), (14, 4), (15, 1)]:
        monkeypatch.setattr(coreml_backend, "_host_macos", lambda host=host: host)
        assert coreml_backend._needs_macos(coreml_backend.MIN_MACOS, "Core ML prediction") is None
    monkeypatch.setattr(coreml_backend, "_host_macos", lambda: (14, 3, 1))
    assert not coreml_backend.compute_plan_availability().ok


# --- MLComputePlan evidence for both attention variants (bookkeeping: test_placement.py) ---


def _planned_on_cpu(op_type: str) -> str:
    """A made-up placement rule for the stand-in plan: layout ops on the CPU, the rest on the ANE."""
    return "cpu" if op_type in ("transpose", "reshape") else "ane"


def test_attention_placement_is_stored_for_both_variants(on_a_mac: StandIns,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from coremltools.models.compute_plan import MLComputePlan

    monkeypatch.setattr(coreml_backend, "_host_macos", lambda: (14, 4))
    planned: list[Path] = []

    def load(path: str, compute_units: Any) -> Any:
        planned.append(Path(path))
        assert compute_units.name == "CPU_AND_NE"
        # The stand-in compiler copied the package: plan the converted program's real ops.
        return plan_of_package(Path(path).parent / "model.mlpackage", _planned_on_cpu)

    monkeypatch.setattr(MLComputePlan, "load_from_path", staticmethod(load))
    spec = replace(CI.attention, variant="ane")
    info = CoreMLBackend("coreml-ane").prepare(spec, "fp16", 0).info
    assert info["variant"] == "ane"

    placements = variant_placements(info)
    assert set(placements) == {"standard", "ane"}
    for variant, summary in placements.items():
        entry = Path(info["model_cache_entry"]).parent / entry_name(replace(spec, variant=variant), "fp16", 0)
        work = [op.type for op in program_ops(entry / "model.mlpackage") if op.type != "const"]
        on_cpu = sum(_planned_on_cpu(t) == "cpu" for t in work)
        assert (summary.variant, summary.phase, summary.compute_units) == (variant, "attention", "CPU_AND_NE")
        assert summary.ops["ane"] + summary.ops["cpu"] == len(work) and summary.ops["cpu"] == on_cpu
        assert summary.ane == pytest.approx(1 - on_cpu / len(work))
        stored = json.loads(next((entry / "plans").iterdir()).read_text())
        assert len(stored["ops"]) == len(program_ops(entry / "model.mlpackage"))  # consts too
    assert ane_share(info) == pytest.approx(placements["ane"].ane)
    assert placements["ane"].ane > placements["standard"].ane  # 2 layout ops against 16, at ci
    assert info["compute_plan_file"].startswith(info["model_cache_entry"])
    assert len(planned) == 2 and "compute_plan_variants_reason" not in info

    # The standard variant's slice finds both plans stored: nothing converted or planned again.
    conversions = len(read_conversion_log(Path(info["model_cache_entry"]).parent))
    again = CoreMLBackend("coreml-ane").prepare(CI.attention, "fp16", 0).info
    assert again["variant"] == "standard" and len(planned) == 2
    assert len(read_conversion_log(Path(info["model_cache_entry"]).parent)) == conversions
    assert variant_placements(again) == placements


def test_a_variant_that_fails_to_convert_leaves_a_reason(on_a_mac: StandIns, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from coremltools.models.compute_plan import MLComputePlan

    from workloads import coreml_convert

    monkeypatch.setenv("SOAKD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(coreml_backend, "_host_macos", lambda: (14, 4))
    monkeypatch.setattr(MLComputePlan, "load_from_path", staticmethod(
        lambda path, compute_units: plan_of_package(Path(path).parent / "model.mlpackage",
                                                    _planned_on_cpu)))
    real = coreml_convert.convert_to_mlprogram

    def only_standard(spec: PhaseSpec, *args: Any) -> Any:
        if getattr(spec, "variant", "standard") != "standard":
            raise RuntimeError("PyTorch convert function for op 'frobnicate' not implemented.")
        return real(spec, *args)

    monkeypatch.setattr(coreml_convert, "convert_to_mlprogram", only_standard)
    info = CoreMLBackend("coreml-ane").prepare(CI.attention, "fp16", 0).info
    assert set(variant_placements(info)) == {"standard"}
    assert "frobnicate" in info["compute_plan_variants_reason"]["ane"]
    assert isinstance(info["compute_plan"], dict)  # the slice's own placement stands


# --- fallback through the rotation --------------------------------------------------------


def _rotate(backends: list[str], precision: str = "fp16", phase: str = "matmul") -> list[Any]:
    plan = RotationPlan(profile=CI, backends=backends, phases=[phase], precisions=[precision],
                        steps=2, cpu_baseline="off", in_process=True)
    events: list[tuple[Any, Any]] = []
    results = RotationRunner(plan, lambda context, event: events.append((context, event))).run()
    return [results, events]


def test_a_phase_that_fails_to_convert_falls_back(on_a_mac: StandIns, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from workloads import coreml_convert

    monkeypatch.setenv("SOAKD_CACHE_DIR", str(tmp_path))  # nothing converted yet

    def broken(*args: Any) -> Any:
        raise RuntimeError("PyTorch convert function for op 'frobnicate' not implemented.")

    monkeypatch.setattr(coreml_convert, "convert_to_mlprogram", broken)
    results, _ = _rotate(["coreml-ane"], phase="attention")
    by_backend = {r.backend: r for r in results}
    assert set(by_backend) == {"coreml-ane", "cpu"}
    assert by_backend["coreml-ane"].failures == {"conversion_failed": 1}
    assert by_backend["coreml-ane"].steps == 0
    ran = by_backend["cpu"]
    assert ran.steps == 2 and ran.requested_backend == "coreml-ane"
    assert ran.fallback is not None and ran.fallback["reason"] == "conversion_failed"
    assert "frobnicate" in ran.fallback["detail"]
    assert [(h["from"], h["to"], h["reason"]) for h in ran.fallback["hops"]] == [
        ("coreml-ane", "mps", "conversion_failed"), ("mps", "cpu", "unavailable")]
    assert on_a_mac.loads == []
    assert not (tmp_path / "coreml").exists() or not [
        p for p in (tmp_path / "coreml").iterdir() if p.name.startswith("attention")]


def test_an_unknown_compute_unit_name_falls_back(on_a_mac: StandIns,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKEND_COMPUTE_UNITS, "coreml-ane", "NEURAL_ENGINE_ONLY")
    results, _ = _rotate(["coreml-ane"])
    ran = next(r for r in results if r.steps)
    assert ran.backend == "cpu"
    assert ran.fallback is not None and ran.fallback["reason"] == "unsupported_compute_units"
    assert "unknown Core ML compute unit 'NEURAL_ENGINE_ONLY'" in ran.fallback["detail"]
    assert on_a_mac.compiles == [] and on_a_mac.loads == []


def test_fp32_on_the_neural_engine_falls_back_instead_of_running_on_the_cpu(
        on_a_mac: StandIns) -> None:
    results, _ = _rotate(["coreml-ane"], precision="fp32")
    ran = next(r for r in results if r.steps)
    assert ran.backend == "cpu" and ran.precision == "fp32"
    assert ran.fallback is not None and ran.fallback["reason"] == "unsupported_precision"
    assert "silently runs on the CPU" in ran.fallback["detail"]


def test_a_rotation_runs_core_ml_end_to_end_with_the_stand_in(on_a_mac: StandIns) -> None:
    results, events = _rotate(["coreml-gpu"], phase="conv")
    (result,) = results
    assert result.backend == "coreml-gpu" and result.fallback is None
    assert result.steps == 2 and result.checks >= 1 and result.mismatches == 0
    assert result.info["compute_units"] == "CPU_AND_GPU"
    assert result.info["compute_plan"] == "unknown"
    assert result.precision == "fp16" and result.info["model_precision"] == "fp16"
    prepared = [e for _, e in events if isinstance(e, Prepared)]
    assert prepared and prepared[0].device_name.startswith("Core ML CPU_AND_GPU")
    assert prepared[0].run.technique == "coreml" and prepared[0].run.backend == "coreml-gpu"
