"""`soakd coreml-overhead`, and `soakd once` with a Core ML backend selected (on Linux:
the fallback with its reason, plus the conversion-overhead section)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.cli import main
from workloads.coreml_overhead import SHAPES, measure_overhead, render_overhead

SEED_004_SHAPES = [[1, 3, 224, 224], [1, 3, 512, 512], [1, 768], [16, 128, 128]]
ROOT = Path(__file__).resolve().parents[2]


def _check_rows(document: dict[str, Any], iterations: int) -> None:
    assert document["iterations"] == iterations
    rows = document["results"]
    assert [(r["shape"], r["dtype"]) for r in rows] == [
        (shape, dtype) for shape in SEED_004_SHAPES for dtype in ("float32", "float16")]
    for row in rows:
        elements = int(np.prod(row["shape"]))
        assert row["elements"] == elements
        assert row["bytes"] == elements * (4 if row["dtype"] == "float32" else 2)
        for key in ("to_coreml_ms", "from_coreml_ms", "round_trip_ms"):
            stats = row[key]
            assert 0 < stats["min"] <= stats["avg"] <= stats["max"]
        for key in ("to_coreml_gb_per_s", "from_coreml_gb_per_s", "round_trip_gb_per_s"):
            assert row[key] > 0


@pytest.mark.skipif(sys.platform == "darwin", reason="the Linux method")
def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coreml-overhead", "--json", "--iterations", "3"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["method"] == "numpy_buffer" and document["mlmultiarray"] is False
    assert "MLMultiArray not available here" in document["note"]
    _check_rows(document, 3)


@pytest.mark.skipif(sys.platform == "darwin", reason="the Linux method")
def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["coreml-overhead", "--iterations", "2", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    for shape in ("[1,3,224,224]", "[1,3,512,512]", "[1,768]", "[16,128,128]"):
        assert shape in out
    assert "numpy_buffer" in out and "note: MLMultiArray not available here" in out


@pytest.mark.parametrize("args", [["--iterations", "0"], ["--warmup", "-1"]])
def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str],
                                           args: list[str]) -> None:
    assert main(["coreml-overhead", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("soakd coreml-overhead: error: ") and "\n" not in err


def test_with_a_stand_in_core_ml_predict() -> None:
    """The macOS method's bookkeeping: predict() on an identity model, timed apart."""
    seen: list[tuple[tuple[int, ...], str]] = []

    def factory(shape: tuple[int, ...], dtype: str) -> Any:
        seen.append((shape, dtype))

        def predict(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # Like coremltools: handed float32 whatever the model's dtype, returns float32.
            (array,) = data.values()
            assert array.dtype == np.float32 and array.flags["C_CONTIGUOUS"]
            return {"y": array.astype(dtype).astype(np.float32)}

        return predict

    document = measure_overhead(iterations=4, warmup=1, shapes=[(1, 768)], predict_factory=factory)
    assert document["method"] == "coreml_identity_predict" and document["mlmultiarray"] is True
    assert seen == [((1, 768), "float32"), ((1, 768), "float16")]
    for row in document["results"]:
        assert set(row) >= {"to_numpy_ms", "predict_identity_ms", "from_numpy_ms",
                            "round_trip_ms", "round_trip_gb_per_s"}
    assert "identity" in render_overhead(document)


def test_identity_model_for_the_macos_method_converts() -> None:
    """The one-op ML Program the macOS method predicts with (conversion only, here)."""
    pytest.importorskip("coremltools")
    if sys.platform == "darwin":
        pytest.skip("on macOS the factory also loads the model; covered by the run itself")
    from workloads.coreml_overhead import identity_predict_factory

    factory = identity_predict_factory()
    for dtype in ("float32", "float16"):
        predict = factory(SHAPES[2], dtype)
        assert callable(predict)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "darwin", reason="on a Mac Core ML runs instead of falling back")
def test_once_with_coreml_ane_falls_back_with_its_reason(tmp_path: Path) -> None:
    env = {**os.environ, "SOAKD_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "once", "--profile", "ci", "--backends", "coreml-ane",
         "--json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    document = json.loads(proc.stdout)
    lanes = [r for r in document["results"] if r["requested_backend"] == "coreml-ane"]
    assert {r["phase"] for r in lanes} == {"matmul", "conv", "attention"}
    for row in lanes:
        assert row["backend"] == "cpu" and row["steps"] > 0  # labelled where it really ran
        fallback = row["fallback"]
        assert fallback["from"] == "coreml-ane" and fallback["to"] == "cpu"
        assert fallback["reason"] == "unavailable"
        assert fallback["detail"] == "Core ML prediction needs macOS 13.0+ (this is Linux)"
        assert [(h["from"], h["to"]) for h in fallback["hops"]] == [("coreml-ane", "mps"),
                                                                     ("mps", "cpu")]
    overhead = document["coreml_conversion_overhead"]
    assert overhead["method"] == "numpy_buffer"
    _check_rows(overhead, 50)


def test_once_adds_the_section_only_when_core_ml_is_selected() -> None:
    from daemon.commands.coreml_overhead import overhead_for_backends

    assert overhead_for_backends(["cpu", "cuda"]) is None
    document = overhead_for_backends(["cpu", "coreml-gpu"], iterations=2)
    assert document is not None and len(document["results"]) == 8
