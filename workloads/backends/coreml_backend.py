"""Core ML backends: coreml-ane, coreml-gpu, coreml-cpu and coreml-all (macOS 13+).

A phase is converted (or taken from the model cache, see `workloads.coreml_convert`),
compiled to an `.mlmodelc` at a fixed cache path and loaded with
`coremltools.models.CompiledMLModel(path, compute_units)`: Core ML keys its Neural Engine
compile cache by that path, so only the first load of a path is a "cold compile".

Which compute units a backend *allows* is not where the work *runs*: the name `coreml-ane`
means CPU_AND_NE, nothing more. Where macOS 14.4+ provides `MLComputePlan`, each op's
preferred device and share of the estimated cost is stored beside the compiled model
(`workloads.placement.ComputePlacement`), and the share of the model's estimated cost that
Core ML places on the Neural Engine, GPU and CPU is reported in the slice's info; for the
attention phase, for both layout variants (the other one is converted to read its plan).
Elsewhere placement is "unknown".

Prediction goes through the tiny `Predictor` protocol (`predict(dict) -> dict`), which
`CompiledMLModel` satisfies, so the bookkeeping around it runs on Linux with a stand-in.
Importing this module never imports coremltools.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from workloads.backends.base import (
    Availability,
    Backend,
    BackendFailure,
    PreparedWorkload,
    PrepareOptions,
)
from workloads.cache import atomic_write
from workloads.coreml_convert import (
    DEPLOYMENT_TARGET,
    PLANS_DIR,
    CachedModel,
    Compiler,
    compile_package,
    ensure_compiled,
    ensure_model,
    first_load,
    record_load,
)
from workloads.models import build
from workloads.phases import ATTENTION_VARIANTS, AttentionSpec, PhaseSpec
from workloads.placement import PLAN_SOURCE, ComputePlacement, OpPlacement
from workloads.protocol import RunConfig
from workloads.timing import SyncClock

MIN_MACOS: tuple[int, int] = (13, 0)
COMPUTE_PLAN_MACOS: tuple[int, int] = (14, 4)
COMPUTE_UNIT_NAMES: tuple[str, ...] = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
BACKEND_COMPUTE_UNITS: dict[str, str] = {
    "coreml-ane": "CPU_AND_NE",
    "coreml-gpu": "CPU_AND_GPU",
    "coreml-cpu": "CPU_ONLY",
    "coreml-all": "ALL",
}
FP32_ON_NE = ("an FP32 model on CPU_AND_NE silently runs on the CPU (the Neural Engine takes "
              "FP16 only), so coreml-ane runs fp16; use coreml-cpu, coreml-gpu or coreml-all "
              "for fp32")
INPUT_COPY_NOTE = (
    "inputs are float32 numpy buffers built once and passed to every predict(); coremltools "
    "wraps float32 arrays as MLMultiArrays without a copy (it cannot pass float16 arrays: it "
    "would replace them with float32 copies first), Core ML converts them to the model's "
    "float16 inputs inside predict(), and float16 outputs come back as float32 copies; all "
    "of it counts in the step time"
)
# What coremltools' binding wraps without a copy (PybindCompatibleArray: float32, float64,
# int32); the buffers are float32 whatever the model's input dtype.
INPUT_BUFFER_DTYPE = "float32"


class Predictor(Protocol):
    """What the workload needs of a loaded model; `CompiledMLModel` provides it."""

    def predict(self, data: dict[str, Any]) -> dict[str, Any]:
        """Outputs by name for inputs by name (numpy arrays); returns when they are ready."""
        ...


Loader = Callable[[Path, str], Predictor]


def macos_version() -> tuple[int, ...]:
    """(major, minor[, patch]) on macOS; () elsewhere."""
    if sys.platform != "darwin":
        return ()
    text = platform.mac_ver()[0]
    try:
        return tuple(int(part) for part in text.split(".") if part)
    except ValueError:
        return ()


def _fmt_version(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version) or "unknown"


@cache
def runtime_availability() -> Availability:
    """Whether Core ML prediction can run here, with the reason when it cannot."""
    refusal = _needs_macos(MIN_MACOS, "Core ML prediction")
    if refusal is not None:
        return refusal
    try:
        import coremltools  # noqa: F401
    except Exception as exc:
        return Availability.no(f"coremltools does not import: {type(exc).__name__}: {exc}")
    try:
        from coremltools import libcoremlpython  # noqa: F401
    except Exception as exc:
        return Availability.no("coremltools' native Core ML runtime (libcoremlpython) does not "
                               f"import: {type(exc).__name__}: {exc}")
    return Availability.yes()


def check_compute_units(name: str) -> str:
    """The compute-unit name itself when Core ML knows it; raises ValueError naming the choices."""
    if name not in COMPUTE_UNIT_NAMES:
        raise ValueError(f"unknown Core ML compute unit {name!r} "
                         f"(choose from {', '.join(COMPUTE_UNIT_NAMES)})")
    return name


def load_compiled_model(path: Path, compute_units: str) -> Predictor:
    """Load an `.mlmodelc` with the given compute units (needs macOS). Raises ValueError for
    an unknown compute-unit name; coremltools' errors propagate."""
    import coremltools as ct
    from coremltools.models import CompiledMLModel

    units = ct.ComputeUnit[check_compute_units(compute_units)]
    model: Predictor = CompiledMLModel(str(path), units)
    return model


# ---------------------------------------------------------------------------------------------
# MLComputePlan: where Core ML plans to run each operation, weighted by its estimated cost.

PlanLoader = Callable[[Path, str], Any]


def _device_kind(device: Any) -> str:
    """"ane" / "gpu" / "cpu" for a coremltools MLComputeDevice, "other" if unrecognised."""
    name = type(device).__name__
    if "NeuralEngine" in name:
        return "ane"
    if "GPU" in name:
        return "gpu"
    if "CPU" in name:
        return "cpu"
    return "other"


def _operations(block: Any) -> Iterator[Any]:
    for operation in block.operations:
        yield operation
        for inner in getattr(operation, "blocks", None) or ():
            yield from _operations(inner)


def read_compute_plan(plan: Any, phase: str, variant: str, compute_units: str,
                      os_version: str) -> ComputePlacement:
    """Every operation of `plan`'s main function with its preferred device and cost share.

    `plan` has the shape of coremltools' `MLComputePlan` (model_structure.program.functions,
    get_compute_device_usage_for_mlprogram_operation, get_estimated_cost_for_mlprogram_operation).
    Raises ValueError when the plan holds no ML Program, no 'main' function, or no cost.
    """
    program = plan.model_structure.program
    if program is None:
        raise ValueError("the compute plan holds no ML Program")
    functions = program.functions
    if "main" not in functions:
        raise ValueError("the ML Program has no 'main' function")
    ops: list[OpPlacement] = []
    for operation in _operations(functions["main"].block):
        usage = plan.get_compute_device_usage_for_mlprogram_operation(operation)
        cost = plan.get_estimated_cost_for_mlprogram_operation(operation)
        outputs = list(getattr(operation, "outputs", None) or ())
        ops.append(OpPlacement(
            operator=str(getattr(operation, "operator_name", "")),
            output=str(outputs[0].name) if outputs else "",
            preferred=None if usage is None else _device_kind(usage.preferred_compute_device),
            supported=() if usage is None else tuple(
                _device_kind(device) for device in usage.supported_compute_devices),
            cost=None if cost is None else float(cost.weight),
        ))
    placement = ComputePlacement(phase=phase, variant=variant, compute_units=compute_units,
                                 os_version=os_version, ops=tuple(ops))
    placement.summary()  # raises ValueError when no operation has a cost
    return placement


def _host_macos() -> tuple[int, ...] | None:
    """The macOS version here, or None when this is not macOS."""
    return macos_version() if sys.platform == "darwin" else None


def _needs_macos(minimum: tuple[int, ...], subject: str) -> Availability | None:
    """Availability.no saying that `subject` needs macOS `minimum`+ and what this host is;
    None on macOS `minimum` or later."""
    version = _host_macos()
    if version is not None and version >= minimum:
        return None
    here = platform.system() if version is None else f"macOS {_fmt_version(version)}"
    return Availability.no(f"{subject} needs macOS {_fmt_version(minimum)}+ (this is {here})")


def compute_plan_availability() -> Availability:
    """Whether MLComputePlan can be read here (macOS 14.4+ and coremltools 8.0+)."""
    refusal = _needs_macos(COMPUTE_PLAN_MACOS, "MLComputePlan")
    if refusal is not None:
        return refusal
    try:
        from coremltools.models.compute_plan import MLComputePlan  # noqa: F401
    except Exception as exc:
        return Availability.no(f"this coremltools has no MLComputePlan (needs 8.0+): {exc}")
    return Availability.yes()


def load_compute_plan(compiled: Path, compute_units: str) -> Any:
    """coremltools' MLComputePlan of an `.mlmodelc` for these compute units (macOS 14.4+)."""
    import coremltools as ct
    from coremltools.models.compute_plan import MLComputePlan

    return MLComputePlan.load_from_path(
        path=str(compiled), compute_units=ct.ComputeUnit[check_compute_units(compute_units)])


def plan_path(compiled: Path, compute_units: str) -> Path:
    """Where the plan of `compiled` for these compute units on this macOS is stored."""
    version = _fmt_version(_host_macos() or ())
    return compiled.parent / PLANS_DIR / f"{compute_units}-macos{version}.json"


def stored_placement(compiled: Path, compute_units: str, phase: str, variant: str,
                     loader: PlanLoader | None = None) -> ComputePlacement:
    """The compute plan of `compiled`, from its stored JSON when there is one for this macOS,
    else read with `loader` (default: MLComputePlan) and stored beside the compiled model.

    Loading a plan makes Core ML compile the model for its devices (seconds to minutes at
    the heavy shapes), so it is done once per compiled model, compute units and macOS
    version. Raises what the loader raises, and ValueError for a plan without costs.
    """
    path = plan_path(compiled, compute_units)
    try:
        stored = ComputePlacement.from_dict(json.loads(path.read_text(encoding="utf-8")))
        if (stored.phase, stored.variant, stored.compute_units) == (phase, variant, compute_units):
            return stored
    except (OSError, KeyError, TypeError, ValueError):
        pass  # absent or unreadable: read the plan again
    plan = (loader or load_compute_plan)(compiled, compute_units)
    placement = read_compute_plan(plan, phase, variant, compute_units,
                                  _fmt_version(_host_macos() or ()))
    text = json.dumps(placement.to_dict(), indent=1)

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(path, write)
    return placement


def compute_plan_placement(path: Path, compute_units: str, phase: str = "",
                           variant: str = "standard") -> dict[str, Any]:
    """Info entries describing placement of the compiled model at `path`.

    `compute_plan` is the ANE/GPU/CPU shares of the estimated cost, or "unknown" with
    `compute_plan_reason`; `compute_plan_file` the stored per-op plan (workloads.placement).
    """
    availability = compute_plan_availability()
    if not availability.ok:
        return {"compute_plan": "unknown", "compute_plan_reason": availability.reason}
    try:
        summary = stored_placement(path, compute_units, phase, variant).summary()
    except Exception as exc:
        return {"compute_plan": "unknown",
                "compute_plan_reason": f"MLComputePlan failed: {type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {
        "compute_plan": summary.shares,
        "compute_plan_ops": summary.ops,
        "compute_plan_source": PLAN_SOURCE,
        "compute_plan_file": str(plan_path(path, compute_units)),
        "compute_plan_variants": {variant: summary.to_dict()},
    }
    if summary.unattributed > 0:
        out["compute_plan_unattributed"] = summary.unattributed
    return out


def sibling_placements(spec: PhaseSpec, precision: str, seed: int, compute_units: str,
                       compiler: Compiler) -> dict[str, Any]:
    """Placement summaries of the attention variants other than `spec`'s, converted and
    compiled (or taken from the cache) to read their compute plans: the evidence that
    compares the layouts on this Mac. Info entries: `compute_plan_variants` (variant ->
    PlacementSummary dict) and `compute_plan_variants_reason` (variant -> why not)."""
    if not isinstance(spec, AttentionSpec):
        return {}
    placed: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    for variant in ATTENTION_VARIANTS:
        if variant == spec.variant:
            continue
        try:
            model = ensure_model(replace(spec, variant=variant), precision, seed)
            compiled = ensure_compiled(model, compiler)
            summary = stored_placement(compiled.path, compute_units, spec.name, variant).summary()
        except Exception as exc:
            reasons[variant] = f"{type(exc).__name__}: {exc}"
            continue
        placed[variant] = summary.to_dict()
    out: dict[str, Any] = {"compute_plan_variants": placed}
    if reasons:
        out["compute_plan_variants_reason"] = reasons
    return out


def placement_label(info: dict[str, Any]) -> str:
    """A slice's planned placement in words from its `info`: "planned placement ane N%, gpu N%,
    cpu N% (MLComputePlan estimate)", or "placement unknown"."""
    plan = info.get("compute_plan")
    if isinstance(plan, dict):
        shares = ", ".join(f"{k} {100 * float(v):.0f}%" for k, v in plan.items())
        return f"planned placement {shares} (MLComputePlan estimate)"
    return "placement unknown"

# ---------------------------------------------------------------------------------------------


@dataclass
class CoreMLWorkload(PreparedWorkload):
    """One compiled Core ML model and its fixed input buffers; a step is one synchronous predict."""

    predictor: Predictor | None = None
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    output_name: str = "output"
    last_output: np.ndarray | None = None
    predictions: int = 0

    def step(self) -> None:
        """One synchronous predict() on the fixed inputs. Raises BackendFailure("runtime_error")
        when the model returns no output of the expected name; Core ML's errors propagate."""
        assert self.predictor is not None, "workload is closed"
        outputs = self.predictor.predict(self.inputs)
        try:
            self.last_output = outputs[self.output_name]
        except KeyError:
            raise BackendFailure("runtime_error", f"the model returned {sorted(outputs)}, "
                                                  f"not {self.output_name!r}") from None
        self.predictions += 1

    def output_sample(self) -> torch.Tensor:
        """Sample 0 of the last output as a float64 CPU tensor (one step first if none ran)."""
        if self.last_output is None:
            self.step()
        assert self.last_output is not None
        sample = np.array(np.asarray(self.last_output)[:1], dtype=np.float64)
        return torch.from_numpy(sample)

    def close(self) -> None:
        """Drop the loaded model, the input buffers and the last output."""
        self.predictor = None
        self.inputs = {}
        self.last_output = None


def input_buffers(spec: PhaseSpec, seed: int) -> dict[str, np.ndarray]:
    """The phase's fixed inputs (the ones the reference uses) as contiguous float32 buffers."""
    _, inputs = build(spec, seed)
    return {name: np.ascontiguousarray(t.numpy(), dtype=np.dtype(INPUT_BUFFER_DTYPE))
            for name, t in inputs.items()}


class CoreMLBackend(Backend):
    """Core ML with one set of compute units; `name` is one of BACKEND_COMPUTE_UNITS.

    `compute_units` overrides the name's units (checked in `prepare()`, so a bad one is a
    recorded failure). Raises ValueError for an unknown name without `compute_units`.
    """

    def __init__(self, name: str, compute_units: str | None = None) -> None:
        if compute_units is None and name not in BACKEND_COMPUTE_UNITS:
            raise ValueError(f"unknown Core ML backend {name!r} "
                             f"(choose from {', '.join(BACKEND_COMPUTE_UNITS)})")
        self.name = name
        # Checked in prepare(), so a bad name is a recorded failure with a fallback.
        self.compute_units = compute_units or BACKEND_COMPUTE_UNITS[name]

    def available(self) -> Availability:
        """Whether Core ML prediction runs here (`runtime_availability`)."""
        return runtime_availability()

    def supports(self, precision: str) -> Availability:
        """fp16, and fp32 unless the units are CPU_AND_NE (the Neural Engine computes fp16)."""
        if precision == "bf16":
            return Availability.no("Core ML has no bf16 compute precision (fp16 or fp32 only)")
        if precision not in ("fp16", "fp32"):
            return Availability.no(f"{self.name} does not run {precision}")
        if precision == "fp32" and self.compute_units == "CPU_AND_NE":
            return Availability.no(FP32_ON_NE)
        return Availability.yes()

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        """Convert (or take from the cache), compile and load the phase; `options` do not apply
        (Core ML decides placement and layout itself). Raises BackendFailure("unavailable")
        off macOS 13+ or without coremltools' runtime, and what `prepare_with` raises."""
        availability = self.available()
        if not availability.ok:
            raise BackendFailure("unavailable", availability.reason)
        return self.prepare_with(spec, precision, seed)

    def prepare_with(self, spec: PhaseSpec, precision: str, seed: int,
                     compiler: Compiler | None = None,
                     loader: Loader | None = None) -> CoreMLWorkload:
        """prepare() past the platform probe; `compiler`/`loader` replace Core ML in tests.

        Raises BackendFailure: `unsupported_precision`, `unsupported_compute_units`,
        `conversion_failed` (converting or compiling, see workloads.coreml_convert) or
        `runtime_error` (loading the compiled model).
        """
        supported = self.supports(precision)
        if not supported.ok:
            raise BackendFailure("unsupported_precision", supported.reason)
        try:
            units = check_compute_units(self.compute_units)
        except ValueError as exc:
            raise BackendFailure("unsupported_compute_units", f"{self.name}: {exc}") from None
        model = ensure_model(spec, precision, seed)
        compiled = ensure_compiled(model, compiler or compile_package)
        cold = compiled.compiled_now or first_load(compiled.path, units)
        t0 = time.perf_counter()
        try:
            predictor: Predictor = (loader or load_compiled_model)(compiled.path, units)
        except Exception as exc:
            raise BackendFailure("runtime_error",
                                 f"loading {compiled.path.name} with {units} failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
        load_seconds = time.perf_counter() - t0
        record_load(compiled.path, units, load_seconds)
        info = self._info(model, compiled.path, compiled.compile_seconds, compiled.compiled_now,
                          load_seconds, cold)
        info.update(self._placement(spec, precision, seed, model, compiled.path,
                                    compiler or compile_package))
        return CoreMLWorkload(
            backend=self.name,
            device_label=f"Core ML {units} (macOS {_fmt_version(macos_version())}; "
                         f"{placement_label(info)})",
            precision=precision,
            clock=SyncClock(lambda: None),  # predict() returns when its outputs are ready
            spec=spec,
            run=RunConfig.for_spec(spec, self.name, precision, technique="coreml"),
            info=info,
            predictor=predictor,
            inputs=input_buffers(spec, seed),
            output_name=model.output_name,
        )

    def _placement(self, spec: PhaseSpec, precision: str, seed: int, model: CachedModel,
                   compiled: Path, compiler: Compiler) -> dict[str, Any]:
        """Placement info of the loaded model, plus the other attention variants' where
        MLComputePlan works (their conversion and compile, once, count in this prepare)."""
        info = compute_plan_placement(compiled, self.compute_units, spec.name, model.variant)
        if isinstance(info.get("compute_plan"), dict) and isinstance(spec, AttentionSpec):
            t0 = time.perf_counter()
            siblings = sibling_placements(spec, precision, seed, self.compute_units, compiler)
            info["compute_plan_variants"].update(siblings.pop("compute_plan_variants"))
            info.update(siblings)
            info["compute_plan_variants_seconds"] = time.perf_counter() - t0
        return info

    def _info(self, model: CachedModel, compiled: Path, compile_seconds: float,
              compiled_now: bool, load_seconds: float, cold: bool) -> dict[str, Any]:
        info: dict[str, Any] = {
            "compute_units": self.compute_units,
            "variant": model.variant,
            "model_precision": model.precision,
            "io_dtype": model.io_dtype,  # the model's inputs and outputs
            "input_buffer_dtype": INPUT_BUFFER_DTYPE,  # what predict() is handed
            "deployment_target": DEPLOYMENT_TARGET,
            "model_cache_entry": str(model.path),
            "compiled_model_path": str(compiled),
            "cache_hit": model.cache_hit,
            "conversion_seconds": model.conversion_seconds,
            "cached_conversion_seconds": model.original_conversion_seconds,
            "compile_seconds": compile_seconds,
            "compiled_now": compiled_now,
            "load_seconds": load_seconds,
            "cold_compile": cold,
            "cold_compile_basis": "first load of this .mlmodelc path with these compute units "
                                  "recorded in the soakd cache (Core ML's own compile cache "
                                  "is not visible; it may have been evicted)",
            "input_copy": INPUT_COPY_NOTE,
        }
        # Separate keys, so that merging later slices' info does not hide the cold load.
        info["cold_compile_load_seconds" if cold else "warm_load_seconds"] = load_seconds
        if model.rebuilt_reason:
            info["cache_rebuilt_reason"] = model.rebuilt_reason
        return info
