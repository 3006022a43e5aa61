"""What it costs to move a tensor between torch and Core ML and back (seed 004's shapes).

What coremltools' `predict()` does with numpy (coremltools 8-9, coremlpython sources):
inputs must be float32 (or float64/int32) arrays, which it wraps as MLMultiArrays without
a copy; float16 arrays are first replaced by float32 copies in the caller's dict, and Core
ML converts to a float16 model input inside the call. Outputs are copied into new numpy
arrays; a float16 output is converted to a float32 MLMultiArray first, so Python gets
float32. Python has no public handle on an MLMultiArray, so none of that can be timed apart
from a real `predict()`:

- `numpy_buffer` (everywhere; the only method off macOS): torch float32 -> numpy view ->
  the contiguous float32 array predict() is handed -> one pass into a buffer of the model's
  input dtype (a cast for float16), standing in for Core ML's own copy/conversion; back:
  (float16 -> float32 pass) -> copy into a new numpy array -> torch (no copy). It is the copy
  work around MLMultiArray, not MLMultiArray itself.
- `coreml_identity_predict` (macOS with Core ML): torch -> numpy float32, `predict()` on a
  one-op identity ML Program whose input/output have the dtype (CPU_ONLY), numpy -> torch.
  Its `predict` time includes Core ML's fixed per-call overhead (~0.2-0.4 ms), not only copies.

`dtype` is the Core ML model's input/output dtype. GB/s is that buffer's bytes (elements x
the dtype's size) over the average time, per direction; for the round trip, twice the bytes
over the round trip's average.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

SHAPES: tuple[tuple[int, ...], ...] = ((1, 3, 224, 224), (1, 3, 512, 512), (1, 768), (16, 128, 128))
DTYPES: tuple[str, ...] = ("float32", "float16")
METHOD_NOTES: dict[str, str] = {
    "numpy_buffer": (
        "MLMultiArray not available here (Core ML prediction needs macOS): measured torch -> "
        "numpy float32 (what predict() wraps without a copy) -> one pass into a buffer of the "
        "model's dtype (Core ML's own copy/conversion, emulated), and back: float16 -> float32 "
        "-> a new numpy array -> torch, as predict() returns outputs; the copy work around "
        "MLMultiArray, not MLMultiArray itself"
    ),
    "coreml_identity_predict": (
        "torch -> numpy float32, then predict() on a one-op identity ML Program (CPU_ONLY) "
        "whose input and output have the dtype (numpy -> MLMultiArray -> numpy inside, plus "
        "Core ML's fixed per-predict overhead), then numpy -> torch"
    ),
}

Predict = Callable[[dict[str, np.ndarray]], dict[str, Any]]
PredictFactory = Callable[[tuple[int, ...], str], Predict]


def _stats(seconds: Sequence[float]) -> dict[str, float]:
    return {"avg": 1e3 * sum(seconds) / len(seconds), "min": 1e3 * min(seconds),
            "max": 1e3 * max(seconds)}


def _gbps(nbytes: int, avg_ms: float) -> float | None:
    return nbytes / (avg_ms / 1e3) / 1e9 if avg_ms > 0 else None


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """torch float32 -> the contiguous float32 array predict() is handed (a view, no copy)."""
    return np.ascontiguousarray(tensor.numpy(), dtype=np.float32)


def _emulated_output(model_buffer: np.ndarray) -> np.ndarray:
    """What predict() returns for an output buffer: float32, in a new numpy array."""
    if model_buffer.dtype != np.float32:
        model_buffer = model_buffer.astype(np.float32)  # the float16 -> float32 MLMultiArray
    return np.array(model_buffer, copy=True)  # py::array(shape, strides, pointer) copies


def measure_shape(shape: tuple[int, ...], dtype: str, iterations: int, warmup: int,
                  predict: Predict | None = None,
                  now: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time one shape and model dtype; through `predict` (an identity model) when given."""
    source = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    model_buffer = np.empty(shape, dtype=np.dtype(dtype))
    to_times: list[float] = []
    mid_times: list[float] = []
    from_times: list[float] = []
    result: torch.Tensor | None = None
    for i in range(warmup + iterations):
        t0 = now()
        inputs = {"x": _to_numpy(source)}
        if predict is None:
            np.copyto(model_buffer, inputs["x"], casting="same_kind")
        t1 = now()
        out = np.asarray(predict(inputs)["y"]) if predict else _emulated_output(model_buffer)
        t2 = now()
        result = torch.from_numpy(out if out.dtype == np.float32 else out.astype(np.float32))
        t3 = now()
        if i >= warmup:
            to_times.append(t1 - t0)
            mid_times.append(t2 - t1)
            from_times.append(t3 - t2)
    assert result is not None and tuple(result.shape) == tuple(shape)
    elements = int(np.prod(shape))
    nbytes = elements * np.dtype(dtype).itemsize
    row: dict[str, Any] = {"shape": list(shape), "dtype": dtype, "elements": elements,
                           "bytes": nbytes}
    round_trip = [a + b + c for a, b, c in zip(to_times, mid_times, from_times, strict=True)]
    if predict is None:
        # The pass into the model's buffer belongs to "to", everything after it to "from".
        from_total = [b + c for b, c in zip(mid_times, from_times, strict=True)]
        row["to_coreml_ms"] = _stats(to_times)
        row["from_coreml_ms"] = _stats(from_total)
        row["to_coreml_gb_per_s"] = _gbps(nbytes, row["to_coreml_ms"]["avg"])
        row["from_coreml_gb_per_s"] = _gbps(nbytes, row["from_coreml_ms"]["avg"])
    else:
        row["to_numpy_ms"] = _stats(to_times)
        row["predict_identity_ms"] = _stats(mid_times)
        row["from_numpy_ms"] = _stats(from_times)
    row["round_trip_ms"] = _stats(round_trip)
    row["round_trip_gb_per_s"] = _gbps(2 * nbytes, row["round_trip_ms"]["avg"])
    return row


def identity_predict_factory() -> PredictFactory:
    """Build a CPU_ONLY identity ML Program per shape/dtype and return its predict (macOS)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    def factory(shape: tuple[int, ...], dtype: str) -> Predict:
        mil_dtype = types.fp16 if dtype == "float16" else types.fp32

        @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=mil_dtype)],
                    opset_version=ct.target.macOS13)
        def program(x: Any) -> Any:
            return mb.identity(x=x, name="y")

        model = ct.convert(program, convert_to="mlprogram",
                           minimum_deployment_target=ct.target.macOS13,
                           compute_precision=ct.precision.FLOAT32,
                           compute_units=ct.ComputeUnit.CPU_ONLY)
        predict: Predict = model.predict
        return predict

    return factory


def _default_factory() -> tuple[str, PredictFactory | None, str | None]:
    """The method to use here and, for Core ML, the identity-model factory."""
    if sys.platform != "darwin":
        return "numpy_buffer", None, None
    from workloads.backends.coreml_backend import runtime_availability

    availability = runtime_availability()
    if not availability.ok:
        return "numpy_buffer", None, availability.reason
    return "coreml_identity_predict", identity_predict_factory(), None


def measure_overhead(iterations: int = 100, warmup: int = 10,
                     shapes: Sequence[tuple[int, ...]] = SHAPES,
                     dtypes: Sequence[str] = DTYPES,
                     predict_factory: PredictFactory | None = None,
                     method: str | None = None) -> dict[str, Any]:
    """The benchmark as one JSON-ready document (`method` and `note` say what was measured).
    Raises ValueError for `iterations` below 1."""
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    fallback_reason: str | None = None
    if predict_factory is None and method is None:
        method, predict_factory, fallback_reason = _default_factory()
    method = method or ("coreml_identity_predict" if predict_factory else "numpy_buffer")
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            predict = predict_factory(tuple(shape), dtype) if predict_factory else None
            rows.append(measure_shape(tuple(shape), dtype, iterations, warmup, predict))
    document: dict[str, Any] = {
        "method": method,
        "mlmultiarray": method == "coreml_identity_predict",
        "note": METHOD_NOTES.get(method, ""),
        "iterations": iterations,
        "warmup": warmup,
        "gb_per_s_definition": "buffer bytes (elements x dtype size) / average time; "
                               "round trip: 2 x bytes / average round-trip time",
        "results": rows,
    }
    if fallback_reason:
        document["coreml_unavailable_reason"] = fallback_reason
    return document


def render_overhead(document: dict[str, Any]) -> str:
    """A table of the benchmark, with the note on what was measured."""
    header = (f"{'shape':<16} {'dtype':<8} {'to ms avg':>10} {'from ms avg':>11} "
              f"{'round ms avg':>12} {'min':>8} {'max':>8} {'trip GB/s':>10}")
    lines = [f"Core ML conversion overhead ({document['method']}, "
             f"{document['iterations']} iterations)", header, "-" * len(header)]
    for row in document["results"]:
        to_ms = row.get("to_coreml_ms") or row.get("to_numpy_ms") or {}
        from_ms = row.get("from_coreml_ms") or row.get("from_numpy_ms") or {}
        trip = row["round_trip_ms"]
        gbps = row.get("round_trip_gb_per_s")
        shape = "[" + ",".join(str(d) for d in row["shape"]) + "]"
        lines.append(
            f"{shape:<16} {row['dtype']:<8} {to_ms.get('avg', float('nan')):>10.4f} "
            f"{from_ms.get('avg', float('nan')):>11.4f} {trip['avg']:>12.4f} "
            f"{trip['min']:>8.4f} {trip['max']:>8.4f} "
            f"{(f'{gbps:.1f}' if gbps is not None else '-'):>10}"
        )
    lines.append(f"note: {document['note']}")
    if document.get("coreml_unavailable_reason"):
        lines.append(f"Core ML unavailable: {document['coreml_unavailable_reason']}")
    return "\n".join(lines)
