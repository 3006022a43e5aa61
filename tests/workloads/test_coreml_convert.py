"""Core ML conversion and the model cache, with the real coremltools (converts on Linux).

Each ci phase is converted once per session (FP16, plus FP32 for the conv net, plus the
ANE-layout attention variant); the tests that damage an entry use their own cache root and
the cheap matmul phase.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from workloads import coreml_convert
from workloads.backends.base import BackendFailure
from workloads.coreml_convert import (
    MANIFEST_NAME,
    PACKAGE_NAME,
    CachedModel,
    ensure_compiled,
    ensure_model,
    entry_name,
    program_ops,
    read_conversion_log,
    verify_entry,
)
from workloads.phases import PHASE_NAMES, PhaseSpec, get_profile

pytest.importorskip("coremltools")

CI = get_profile("ci")
ANE = replace(CI.attention, variant="ane")


@pytest.fixture(scope="session")
def session_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("coreml-cache") / "coreml"


@pytest.fixture(scope="session")
def converted(session_root: Path) -> dict[tuple[str, str], CachedModel]:
    out = {(phase, "fp16"): ensure_model(CI.spec(phase), "fp16", 0, root=session_root)
           for phase in PHASE_NAMES}
    out[("conv", "fp32")] = ensure_model(CI.spec("conv"), "fp32", 0, root=session_root)
    out[("attention-ane", "fp16")] = ensure_model(ANE, "fp16", 0, root=session_root)
    return out


def load_spec(model: CachedModel) -> Any:
    import coremltools as ct

    return ct.utils.load_spec(str(model.package))


def mil_ops(spec: Any) -> Iterator[Any]:
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]

    def walk(block: Any) -> Iterator[Any]:
        for op in block.operations:
            yield op
            for inner in op.blocks:
                yield from walk(inner)

    yield from walk(block)


def dtype_name(value_type: Any) -> str | None:
    from coremltools.proto import MIL_pb2

    if value_type.WhichOneof("type") != "tensorType":
        return None
    return str(MIL_pb2.DataType.Name(value_type.tensorType.dataType))


def weight_dtypes(spec: Any) -> list[str]:
    """dtypes of the weight tensors (const ops whose value lives in the weight blob file)."""
    out = []
    for op in mil_ops(spec):
        if op.type == "const" and op.attributes["val"].WhichOneof("value") == "blobFileValue":
            name = dtype_name(op.attributes["val"].type)
            assert name is not None
            out.append(name)
    return out


def compute_dtypes(spec: Any) -> set[str]:
    """Float dtypes produced by the non-const ops (the arithmetic the model does)."""
    found = set()
    for op in mil_ops(spec):
        if op.type == "const":
            continue
        for output in op.outputs:
            name = dtype_name(output.type)
            if name and name.startswith(("FLOAT", "BFLOAT")):
                found.add(name)
    return found


def io_facts(spec: Any) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict[str, tuple[tuple[int, ...], str]]]:
    from coremltools.proto import FeatureTypes_pb2

    names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name

    def facts(items: Any) -> dict[str, tuple[tuple[int, ...], str]]:
        return {i.name: (tuple(i.type.multiArrayType.shape), names(i.type.multiArrayType.dataType))
                for i in items}

    return facts(spec.description.input), facts(spec.description.output)


@pytest.mark.parametrize("phase", PHASE_NAMES)
def test_ci_phase_converts_to_an_mlprogram_with_fixed_named_shapes(
        converted: dict[tuple[str, str], CachedModel], phase: str) -> None:
    spec = CI.spec(phase)
    model = converted[(phase, "fp16")]
    ml = load_spec(model)
    assert ml.WhichOneof("Type") == "mlProgram"
    inputs, outputs = io_facts(ml)
    assert inputs == {name: (shape, "FLOAT16") for name, shape in spec.input_shapes().items()}
    assert outputs == {"output": (spec.output_shape(), "FLOAT16")}
    # What the cache recorded matches the package.
    assert model.input_shapes == spec.input_shapes()
    assert model.output_name == "output" and model.output_shape == spec.output_shape()
    assert model.io_dtype == "float16"
    assert model.cache_hit is False and model.conversion_seconds and model.conversion_seconds > 0


@pytest.mark.parametrize("phase", [*PHASE_NAMES, "attention-ane"])
def test_fp16_models_compute_in_fp16_with_fp16_weights(
        converted: dict[tuple[str, str], CachedModel], phase: str) -> None:
    ml = load_spec(converted[(phase, "fp16")])
    weights = weight_dtypes(ml)
    if phase == "matmul":
        assert weights == []  # a product of the two inputs: no weights at all
    else:
        assert weights and set(weights) == {"FLOAT16"}
    assert compute_dtypes(ml) == {"FLOAT16"}


def test_fp32_model_keeps_fp32_weights(converted: dict[tuple[str, str], CachedModel]) -> None:
    ml = load_spec(converted[("conv", "fp32")])
    assert set(weight_dtypes(ml)) == {"FLOAT32"}
    assert compute_dtypes(ml) == {"FLOAT32"}
    inputs, outputs = io_facts(ml)
    assert {dtype for _, dtype in inputs.values()} == {"FLOAT32"}
    assert outputs["output"][1] == "FLOAT32"


def _work(ops: list[Any]) -> list[Any]:
    return [op for op in ops if op.type != "const"]


def test_the_ane_variant_converts_to_convs_and_keeps_transposes_at_the_edges(
        converted: dict[tuple[str, str], CachedModel]) -> None:
    """Issue 18: linear layers are `conv` ops; no `transpose` inside the encoder layers."""
    model = converted[("attention-ane", "fp16")]
    inputs, outputs = io_facts(load_spec(model))
    assert inputs == {"x": (ANE.input_shapes()["x"], "FLOAT16")}
    assert outputs == {"output": (ANE.output_shape(), "FLOAT16")}
    assert model.variant == "ane"
    ops = _work(program_ops(model.package))
    types = [op.type for op in ops]
    assert types.count("conv") == 4 * ANE.layers  # qkv, out, ff1, ff2
    assert "linear" not in types
    # Attention split per head: a score and a weighted-sum matmul per head and layer.
    assert types.count("matmul") == 2 * ANE.heads * ANE.layers
    assert types.count("softmax") == ANE.heads * ANE.layers
    # Two transposes: the first op reads the model input, the last writes the model output.
    assert types.count("transpose") == 2
    assert ops[0].type == "transpose" and ops[0].inputs["x"] == ("x",)
    assert ops[-1].type == "transpose" and ops[-1].outputs == ("output",)
    assert "reshape" not in types

    # The standard layout, converted the same way, does have transposes inside its layers:
    # the assertion above tells the layouts apart.
    standard = [op.type for op in _work(program_ops(converted[("attention", "fp16")].package))]
    assert standard.count("transpose") == 4 * CI.attention.layers
    assert standard.count("linear") == 4 * CI.attention.layers and "conv" not in standard


def test_the_ane_variant_works_on_the_channel_axis(
        converted: dict[tuple[str, str], CachedModel]) -> None:
    """Layer norm over axis 1 of (B, C, 1, S); per-head scores contract over the channels
    with matmul(transpose_x=True) (torch's transpose of k folded into the op)."""
    ml = load_spec(converted[("attention-ane", "fp16")])
    consts = {op.outputs[0].name: op.attributes["val"].immediateValue.tensor
              for op in mil_ops(ml) if op.type == "const"
              and op.attributes["val"].WhichOneof("value") == "immediateValue"}

    def const(op: Any, argument: str) -> list[Any]:
        tensor = consts[op.inputs[argument].arguments[0].name]
        return list(tensor.ints.values) or list(tensor.bools.values)

    norms = [op for op in mil_ops(ml) if op.type == "layer_norm"]
    assert len(norms) == 2 * ANE.layers
    assert all(const(op, "axes") == [1] for op in norms)
    flags = sorted((const(op, "transpose_x"), const(op, "transpose_y"))
                   for op in mil_ops(ml) if op.type == "matmul")
    per_kind = ANE.heads * ANE.layers
    assert flags == [([False], [False])] * per_kind + [([True], [False])] * per_kind


def test_second_run_hits_the_cache(converted: dict[tuple[str, str], CachedModel],
                                   session_root: Path) -> None:
    conversions = len(coreml_convert.CONVERSIONS)
    logged = len(read_conversion_log(session_root))
    for phase in PHASE_NAMES:
        t0 = time.perf_counter()
        again = ensure_model(CI.spec(phase), "fp16", 0, root=session_root)
        assert time.perf_counter() - t0 < 2.0
        first = converted[(phase, "fp16")]
        assert again.cache_hit is True and again.conversion_seconds is None
        assert again.path == first.path
        assert again.original_conversion_seconds == pytest.approx(first.conversion_seconds)
    assert len(coreml_convert.CONVERSIONS) == conversions
    assert len(read_conversion_log(session_root)) == logged
    # The log holds exactly one conversion per entry made in this session.
    entries = [record["entry"] for record in read_conversion_log(session_root)]
    assert len(entries) == len(set(entries)) == len(converted)


def test_cache_key_covers_shapes_precision_seed_and_versions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CI.matmul
    base = entry_name(spec, "fp16", 0)
    assert base.startswith("matmul-fp16-")
    assert entry_name(replace(spec, n=64), "fp16", 0) != base
    assert entry_name(spec, "fp32", 0) != base
    assert entry_name(spec, "fp16", 1) != base
    standard = entry_name(CI.attention, "fp16", 0)
    assert standard.startswith("attention-fp16-")
    assert entry_name(ANE, "fp16", 0).startswith("attention-ane-fp16-")
    assert entry_name(ANE, "fp16", 0)[-20:] != standard[-20:]  # the digest covers it too
    real = coreml_convert._version
    monkeypatch.setattr(coreml_convert, "_version",
                        lambda dist: "0.0-other" if dist == "coremltools" else real(dist))
    assert entry_name(spec, "fp16", 0) != base
    monkeypatch.setattr(coreml_convert, "_version",
                        lambda dist: "0.0-other" if dist == "torch" else real(dist))
    assert entry_name(spec, "fp16", 0) != base


def test_cache_lives_in_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setenv("SOAKD_CACHE_DIR", str(tmp_path))
    assert coreml_convert.coreml_cache_root() == tmp_path / "coreml"


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(entry: Path) -> str:
    victim = _largest_file(entry / PACKAGE_NAME)
    size = victim.stat().st_size
    with open(victim, "r+b") as handle:
        handle.truncate(size // 2)
    return "truncated"


def _garble_manifest(entry: Path) -> str:
    (entry / MANIFEST_NAME).write_text('{"format": 1, "files": {')
    return "unreadable"


def _drop_manifest(entry: Path) -> str:
    (entry / MANIFEST_NAME).unlink()
    return "missing"


def _flip_a_byte(entry: Path) -> str:
    victim = _largest_file(entry / PACKAGE_NAME)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return "checksum"


@pytest.mark.parametrize("damage", [_truncate, _garble_manifest, _drop_manifest, _flip_a_byte])
def test_a_damaged_entry_is_detected_removed_and_rebuilt(tmp_path: Path, damage: Any) -> None:
    import coremltools as ct

    spec = CI.spec("matmul")
    first = ensure_model(spec, "fp16", 0, root=tmp_path)
    expected = verify_entry(first.path)["files"]
    words = damage(first.path)
    conversions = len(read_conversion_log(tmp_path))

    rebuilt = ensure_model(spec, "fp16", 0, root=tmp_path)
    assert rebuilt.cache_hit is False and rebuilt.conversion_seconds is not None
    assert rebuilt.rebuilt_reason is not None and words in rebuilt.rebuilt_reason
    assert rebuilt.path == first.path
    assert len(read_conversion_log(tmp_path)) == conversions + 1
    assert read_conversion_log(tmp_path)[-1]["rebuilt"] == rebuilt.rebuilt_reason
    # The rebuilt package is whole again: same files and sizes, and coremltools reads it.
    assert {k: v["size"] for k, v in verify_entry(rebuilt.path)["files"].items()} == \
        {k: v["size"] for k, v in expected.items()}
    ct.utils.load_spec(str(rebuilt.package))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_a_crash_mid_write_never_leaves_a_loadable_entry(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    spec = CI.spec("matmul")
    name = entry_name(spec, "fp16", 0)

    def half_written(spec: PhaseSpec, precision: str, seed: int, package: Path) -> Any:
        (package / "Data").mkdir(parents=True)
        (package / "Data" / "model.mlmodel").write_bytes(b"\x08\x07partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(coreml_convert, "convert_to_mlprogram", half_written)
    with pytest.raises(BackendFailure) as caught:
        ensure_model(spec, "fp16", 0, root=tmp_path)
    assert caught.value.reason == "conversion_failed"
    assert "No space left on device" in caught.value.detail
    assert not (tmp_path / name).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]

    # A process killed mid-conversion leaves its work directory behind: it is never taken
    # for the entry, and an old one is swept.
    monkeypatch.undo()
    stale = tmp_path / f".tmp-{name}-99999-dead"
    (stale / PACKAGE_NAME).mkdir(parents=True)
    (stale / PACKAGE_NAME / "Manifest.json").write_text("{")
    old = time.time() - coreml_convert.STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    model = ensure_model(spec, "fp16", 0, root=tmp_path)
    assert model.cache_hit is False and model.path == tmp_path / name
    verify_entry(model.path)
    assert not stale.exists()


def test_an_entry_missing_package_files_is_rebuilt(tmp_path: Path) -> None:
    spec = CI.spec("matmul")
    model = ensure_model(spec, "fp16", 0, root=tmp_path)
    shutil.rmtree(model.path / PACKAGE_NAME / "Data")
    again = ensure_model(spec, "fp16", 0, root=tmp_path)
    assert again.cache_hit is False and "missing" in (again.rebuilt_reason or "")


def test_a_phase_that_fails_to_convert_is_a_conversion_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(spec: PhaseSpec, precision: str, seed: int, package: Path) -> Any:
        raise RuntimeError("PyTorch convert function for op 'frobnicate' not implemented.")

    monkeypatch.setattr(coreml_convert, "convert_to_mlprogram", broken)
    with pytest.raises(BackendFailure) as caught:
        ensure_model(CI.spec("attention"), "fp16", 0, root=tmp_path)
    assert caught.value.reason == "conversion_failed"
    assert caught.value.detail.startswith("attention fp16: RuntimeError: ")
    assert "frobnicate" in caught.value.detail
    assert read_conversion_log(tmp_path) == []


def test_bf16_is_refused_before_converting(tmp_path: Path) -> None:
    with pytest.raises(BackendFailure) as caught:
        ensure_model(CI.spec("matmul"), "bf16", 0, root=tmp_path)
    assert caught.value.reason == "unsupported_precision"


def _fake_compiler(calls: list[Path]) -> Any:
    def compile_(package: Path, destination: Path) -> None:
        calls.append(destination)
        shutil.copytree(package, destination)

    return compile_


def test_compiled_model_is_kept_at_a_fixed_path_and_checked(tmp_path: Path) -> None:
    model = ensure_model(CI.spec("matmul"), "fp16", 0, root=tmp_path)
    calls: list[Path] = []
    first = ensure_compiled(model, _fake_compiler(calls))
    assert first.compiled_now and first.path == model.path / "model.mlmodelc"
    assert len(calls) == 1 and calls[0].suffix == ".mlmodelc" and calls[0] != first.path
    facts = json.loads((model.path / "compiled.json").read_text())
    assert facts["files"]

    second = ensure_compiled(model, _fake_compiler(calls))
    assert not second.compiled_now and second.compile_seconds == 0.0
    assert second.path == first.path and len(calls) == 1

    # A damaged compiled model is compiled again, at the same path.
    victim = _largest_file(first.path)
    victim.write_bytes(victim.read_bytes()[:10])
    third = ensure_compiled(model, _fake_compiler(calls))
    assert third.compiled_now and third.path == first.path and len(calls) == 2


def test_compile_failure_is_a_conversion_failure_and_leaves_no_compiled_model(
        tmp_path: Path) -> None:
    model = ensure_model(CI.spec("matmul"), "fp16", 0, root=tmp_path)

    def failing(package: Path, destination: Path) -> None:
        destination.mkdir()
        raise RuntimeError("Compiling a Core ML models is only support on macOS")

    with pytest.raises(BackendFailure) as caught:
        ensure_compiled(model, failing)
    assert caught.value.reason == "conversion_failed"
    assert "compiling to .mlmodelc failed" in caught.value.detail
    assert not model.compiled_path.exists()
    assert not [p for p in model.path.iterdir() if p.name.startswith(".tmp-")]
