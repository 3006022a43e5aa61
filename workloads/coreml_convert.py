"""Core ML conversion of the phases and the on-disk model cache.

Each phase's torch model is captured with `torch.jit.trace` (coremltools' stable path) and
converted to an ML Program with fixed input shapes, named inputs (the spec's names) and one
output named `output`. FP16 models have float16 inputs and outputs (no cast ops in the
program, which is what the Neural Engine wants; from Python, Core ML converts the float32
arrays that coremltools' predict() hands it); FP32 models float32.

Cache layout, under `cache_dir()/coreml/`:

    <phase>[-<variant>]-<precision>-<digest>/
                                         one entry per key (phase, spec shapes and attention
                                         variant, precision, seed, deployment target,
                                         coremltools and torch versions); "-ane" for the ANE
                                         layout, nothing for the standard one
        model.mlpackage/                 the ML Program
        manifest.json                    written last: size and sha256 of every package file
        model.mlmodelc/                  compiled (macOS only), at this fixed path
        compiled.json                    written after the compile: sizes and sha256s
        loads/<COMPUTE_UNITS>.json       written after the first load with those compute units
        plans/<COMPUTE_UNITS>-macos<V>.json   MLComputePlan per op (macOS 14.4+), see
                                         workloads.placement
    conversions.jsonl                    one line per conversion actually done
    .tmp-* / .trash-*                    work in progress / entries being removed

An entry is built in a `.tmp-*` directory and renamed into place whole, so a crash mid-write
leaves only a `.tmp-*` directory that is never loaded (and is swept later). An entry whose
manifest is missing or unreadable, or whose files differ from it in size or checksum, is
removed and rebuilt. Everything that imports coremltools does so inside functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from workloads.backends.base import BackendFailure
from workloads.cache import atomic_write, cache_dir
from workloads.phases import PhaseSpec, variant_of

CACHE_FORMAT = 1
DEPLOYMENT_TARGET = "macOS13"  # ML Program with fp16 inputs/outputs; CPU_AND_NE exists from 13
COMPUTE_PRECISIONS: dict[str, str] = {"fp16": "FLOAT16", "fp32": "FLOAT32"}
IO_DTYPES: dict[str, str] = {"fp16": "float16", "fp32": "float32"}
OUTPUT_NAME = "output"
PACKAGE_NAME = "model.mlpackage"
COMPILED_NAME = "model.mlmodelc"
MANIFEST_NAME = "manifest.json"
COMPILED_MANIFEST_NAME = "compiled.json"
LOADS_DIR = "loads"
PLANS_DIR = "plans"
LOG_NAME = "conversions.jsonl"
STALE_TMP_SECONDS = 6 * 3600.0

# Conversions done by this process (tests read it to tell a cache hit from a conversion).
CONVERSIONS: list[dict[str, Any]] = []


class CorruptEntry(Exception):
    """A cache entry that must not be loaded; the message says why."""


@dataclass(frozen=True)
class ConvertedModel:
    """What a conversion produced, as recorded in the manifest."""

    input_shapes: dict[str, tuple[int, ...]]
    output_name: str
    output_shape: tuple[int, ...]
    io_dtype: str


@dataclass(frozen=True)
class CachedModel:
    """A verified cache entry holding the converted `.mlpackage`."""

    phase: str
    precision: str
    key: str
    path: Path
    cache_hit: bool
    conversion_seconds: float | None  # this call's conversion; None when it came from the cache
    original_conversion_seconds: float  # what the conversion of this entry took when it was made
    input_shapes: dict[str, tuple[int, ...]]
    output_name: str
    output_shape: tuple[int, ...]
    io_dtype: str
    rebuilt_reason: str | None = None  # why a cached entry was discarded before this conversion
    variant: str = "standard"  # the attention layout (workloads.phases.ATTENTION_VARIANTS)

    @property
    def package(self) -> Path:
        """The entry's `model.mlpackage`."""
        return self.path / PACKAGE_NAME

    @property
    def compiled_path(self) -> Path:
        """The fixed path of the entry's compiled `model.mlmodelc` (present once compiled)."""
        return self.path / COMPILED_NAME


@dataclass(frozen=True)
class CompiledModel:
    """A verified compiled `.mlmodelc`: its path, how long this call's compile took in seconds
    (0.0 from the cache), and whether it was compiled by this call."""

    path: Path
    compile_seconds: float  # 0.0 when the compiled model was already in the cache
    compiled_now: bool


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def coreml_cache_root() -> Path:
    """The Core ML model cache: `coreml/` under workloads.cache.cache_dir()."""
    return cache_dir() / "coreml"


def cache_key(spec: PhaseSpec, precision: str, seed: int) -> dict[str, Any]:
    """Everything the converted model depends on (the attention variant too: each layout is
    its own model)."""
    return {
        "format": CACHE_FORMAT,
        "phase": spec.name,
        "variant": variant_of(spec),
        "spec": asdict(spec),
        "precision": precision,
        "seed": seed,
        "deployment_target": DEPLOYMENT_TARGET,
        "coremltools": _version("coremltools"),
        "torch": _version("torch"),
    }


def entry_name(spec: PhaseSpec, precision: str, seed: int) -> str:
    """`<phase>[-<variant>]-<precision>-<digest of cache_key>`; the standard layout has no
    variant part, so the name starts with the phase name either way."""
    blob = json.dumps(cache_key(spec, precision, seed), sort_keys=True, default=list)
    variant = variant_of(spec)
    tag = spec.name if variant == "standard" else f"{spec.name}-{variant}"
    return f"{tag}-{precision}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"


def _file_table(directory: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under `directory`, by relative path."""
    table: dict[str, dict[str, Any]] = {}
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            table[path.relative_to(directory).as_posix()] = {
                "size": path.stat().st_size, "sha256": digest.hexdigest(),
            }
    return table


def _check_files(directory: Path, recorded: Any) -> None:
    if not isinstance(recorded, dict) or not recorded:
        raise CorruptEntry(f"no file list recorded for {directory.name}")
    if not directory.is_dir():
        raise CorruptEntry(f"{directory.name} is missing")
    actual = _file_table(directory)
    for rel, facts in recorded.items():
        have = actual.get(rel)
        if have is None:
            raise CorruptEntry(f"{directory.name}/{rel} is missing")
        if have["size"] != facts.get("size"):
            raise CorruptEntry(f"{directory.name}/{rel} has {have['size']} bytes, "
                               f"expected {facts.get('size')} (truncated?)")
        if have["sha256"] != facts.get("sha256"):
            raise CorruptEntry(f"{directory.name}/{rel} fails its checksum")
    extra = sorted(set(actual) - set(recorded))
    if extra:
        raise CorruptEntry(f"{directory.name} holds unexpected files: {', '.join(extra[:3])}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptEntry(f"{path.name} is missing (an interrupted write?)") from None
    except (OSError, ValueError) as exc:
        raise CorruptEntry(f"{path.name} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise CorruptEntry(f"{path.name} is not a JSON object")
    return data


def verify_entry(path: Path, key: dict[str, Any] | None = None) -> dict[str, Any]:
    """The entry's manifest after checking every package file against it; raises CorruptEntry."""
    manifest = _read_json(path / MANIFEST_NAME)
    if manifest.get("format") != CACHE_FORMAT:
        raise CorruptEntry(f"cache format {manifest.get('format')!r}, expected {CACHE_FORMAT}")
    if key is not None and json.loads(json.dumps(key, default=list)) != manifest.get("key"):
        raise CorruptEntry("manifest key does not match the entry's name")
    for field_name in ("inputs", "output", "io_dtype", "conversion_seconds"):
        if field_name not in manifest:
            raise CorruptEntry(f"manifest lacks {field_name!r}")
    _check_files(path / PACKAGE_NAME, manifest.get("files"))
    return manifest


def _discard(path: Path) -> None:
    """Remove an entry (or part of one): renamed aside first, so it is never half-seen."""
    if not path.exists():
        return
    trash = path.parent / f".trash-{path.name}-{secrets.token_hex(4)}"
    try:
        os.rename(path, trash)
    except OSError:
        trash = path
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def _sweep(root: Path) -> None:
    """Delete trash, and work directories left by a crash long enough ago."""
    now = time.time()
    for child in root.iterdir() if root.is_dir() else ():
        if child.name.startswith(".trash-"):
            shutil.rmtree(child, ignore_errors=True)
        elif child.name.startswith(".tmp-"):
            try:
                old = now - child.stat().st_mtime > STALE_TMP_SECONDS
            except OSError:
                continue
            if old:
                shutil.rmtree(child, ignore_errors=True)


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """An exclusive lock per entry, so two workers never convert or compile the same model."""
    locks = root / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic rename still protects readers
        yield
        return
    with open(locks / f"{name}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _fsync_tree(directory: Path) -> None:
    for root, _, files in os.walk(directory):
        for name in files:
            with open(Path(root) / name, "rb") as handle:
                os.fsync(handle.fileno())


def convert_to_mlprogram(spec: PhaseSpec, precision: str, seed: int,
                         package: Path) -> ConvertedModel:
    """Trace the phase's model and convert it to an ML Program saved at `package`.

    Raises ValueError when the converted model does not have exactly one output or its input
    and output shapes differ from the spec's; coremltools' and torch's errors propagate.
    """
    import coremltools as ct
    import numpy as np
    import torch

    from workloads.models import build

    model, inputs = build(spec, seed)
    np_dtype = np.float16 if precision == "fp16" else np.float32
    # Every phase model is batch-independent (see workloads.phases), so the trace runs on
    # sample 0 only (a heavy conv step is TFLOPs on the CPU) and the converter is given the
    # full fixed shapes; the converted output shape is checked against the spec below.
    samples = tuple(t[:1] for t in inputs.values())
    with torch.no_grad(), warnings.catch_warnings():
        # torch deprecates jit.trace in favour of torch.export; it is still coremltools'
        # stable capture path, so its warning is noise here.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        traced = torch.jit.trace(model, samples)
    mlmodel = ct.convert(
        traced,
        source="pytorch",
        convert_to="mlprogram",
        inputs=[ct.TensorType(name=name, shape=tuple(t.shape), dtype=np_dtype)
                for name, t in inputs.items()],
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np_dtype)],
        compute_precision=getattr(ct.precision, COMPUTE_PRECISIONS[precision]),
        minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
        skip_model_load=True,  # compiled and loaded later, at a fixed path (and only on macOS)
    )
    mlmodel.save(str(package))
    description = mlmodel.get_spec().description
    input_shapes = {item.name: tuple(int(d) for d in item.type.multiArrayType.shape)
                    for item in description.input}
    outputs = list(description.output)
    if len(outputs) != 1:
        raise ValueError(f"expected one output, the converted model has {len(outputs)}")
    output_shape = tuple(int(d) for d in outputs[0].type.multiArrayType.shape)
    if input_shapes != spec.input_shapes() or output_shape != spec.output_shape():
        raise ValueError(f"converted shapes {input_shapes} -> {output_shape} differ from the "
                         f"phase's {spec.input_shapes()} -> {spec.output_shape()}")
    return ConvertedModel(
        input_shapes=input_shapes,
        output_name=outputs[0].name,
        output_shape=output_shape,
        io_dtype=IO_DTYPES[precision],
    )


@dataclass(frozen=True)
class ProgramOp:
    """One operation of a saved ML Program: its MIL type ("conv", "transpose", "const", ...),
    the names of the values bound to each of its arguments, and its outputs' names."""

    type: str
    inputs: dict[str, tuple[str, ...]]
    outputs: tuple[str, ...]


def program_ops(package: Path) -> list[ProgramOp]:
    """The operations of the package's `main` function in program order (nested blocks
    depth-first, consts included), read from the saved spec: what Core ML will compile.

    Raises ValueError when the package holds no ML Program with a `main` function.
    """
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    if spec.WhichOneof("Type") != "mlProgram" or "main" not in spec.mlProgram.functions:
        raise ValueError(f"{package} holds no ML Program with a 'main' function")
    function = spec.mlProgram.functions["main"]

    def walk(block: Any) -> Iterator[ProgramOp]:
        for op in block.operations:
            yield ProgramOp(
                type=str(op.type),
                inputs={name: tuple(arg.name for arg in argument.arguments if arg.name)
                        for name, argument in op.inputs.items()},
                outputs=tuple(output.name for output in op.outputs),
            )
            for inner in op.blocks:
                yield from walk(inner)

    return list(walk(function.block_specializations[function.opset]))


def _tail(text: str, limit: int = 600) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines()
             if line.strip() and "it/s]" not in line and "passes/s]" not in line
             and "ops/s]" not in line]
    joined = " | ".join(lines[-4:])
    return joined[-limit:]


def _log_conversion(root: Path, record: dict[str, Any]) -> None:
    CONVERSIONS.append(record)
    line = json.dumps(record, sort_keys=True) + "\n"
    fd = os.open(root / LOG_NAME, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_conversion_log(root: Path | None = None) -> list[dict[str, Any]]:
    """Every conversion recorded under `root` (default: this user's Core ML cache)."""
    path = (root or coreml_cache_root()) / LOG_NAME
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _cached(spec: PhaseSpec, precision: str, name: str, path: Path, manifest: dict[str, Any],
            *, hit: bool, seconds: float | None, rebuilt: str | None) -> CachedModel:
    output = manifest["output"]
    return CachedModel(
        phase=spec.name, precision=precision, key=name, path=path, cache_hit=hit,
        conversion_seconds=seconds,
        original_conversion_seconds=float(manifest["conversion_seconds"]),
        input_shapes={k: tuple(v) for k, v in manifest["inputs"].items()},
        output_name=str(output["name"]), output_shape=tuple(output["shape"]),
        io_dtype=str(manifest["io_dtype"]), rebuilt_reason=rebuilt, variant=variant_of(spec),
    )


def ensure_model(spec: PhaseSpec, precision: str, seed: int = 0,
                 root: Path | None = None) -> CachedModel:
    """The phase's converted model from the cache, converting it first when absent or corrupt.

    Raises BackendFailure("unsupported_precision") for a precision Core ML lacks and
    BackendFailure("conversion_failed") when tracing, conversion or saving fails; an OSError
    making the cache directories or writing the conversion log propagates.
    """
    if precision not in COMPUTE_PRECISIONS:
        raise BackendFailure("unsupported_precision",
                             f"Core ML converts fp16 or fp32 models, not {precision}")
    root = root or coreml_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(spec, precision, seed)
    name = entry_name(spec, precision, seed)
    path = root / name
    with _locked(root, name):
        _sweep(root)
        rebuilt: str | None = None
        if path.exists():
            try:
                manifest = verify_entry(path, key)
            except CorruptEntry as exc:
                rebuilt = str(exc)
                _discard(path)
            else:
                return _cached(spec, precision, name, path, manifest, hit=True, seconds=None,
                               rebuilt=None)
        work = root / f".tmp-{name}-{os.getpid()}-{secrets.token_hex(4)}"
        work.mkdir()
        captured = io.StringIO()
        try:
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):
                    converted = convert_to_mlprogram(spec, precision, seed, work / PACKAGE_NAME)
            except Exception as exc:
                noise = _tail(captured.getvalue())
                detail = f"{spec.name} {precision}: {type(exc).__name__}: {exc}"
                if noise:
                    detail += f" (converter said: {noise})"
                raise BackendFailure("conversion_failed", detail) from exc
            seconds = time.perf_counter() - t0
            try:
                _fsync_tree(work / PACKAGE_NAME)
                manifest = {
                    "format": CACHE_FORMAT,
                    "key": json.loads(json.dumps(key, default=list)),
                    "inputs": {k: list(v) for k, v in converted.input_shapes.items()},
                    "output": {"name": converted.output_name,
                               "shape": list(converted.output_shape)},
                    "io_dtype": converted.io_dtype,
                    "conversion_seconds": seconds,
                    "created": time.time(),
                    "files": _file_table(work / PACKAGE_NAME),
                }
                # The manifest goes in last: an entry without one is never trusted.
                _write_json(work / MANIFEST_NAME, manifest)
                os.rename(work, path)
            except OSError as exc:
                raise BackendFailure("conversion_failed",
                                     f"{spec.name} {precision}: writing the cache entry failed: "
                                     f"{exc}") from exc
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        _log_conversion(root, {"entry": name, "phase": spec.name, "variant": variant_of(spec),
                               "precision": precision, "seed": seed, "seconds": seconds, "time": time.time(),
                               "pid": os.getpid(), "rebuilt": rebuilt})
        return _cached(spec, precision, name, path, manifest, hit=False, seconds=seconds,
                       rebuilt=rebuilt)


def compile_package(package: Path, destination: Path) -> None:
    """Compile an `.mlpackage` to an `.mlmodelc` directory (needs macOS)."""
    from coremltools.models.utils import compile_model

    compile_model(str(package), str(destination))


Compiler = Callable[[Path, Path], None]


def ensure_compiled(model: CachedModel, compiler: Compiler = compile_package) -> CompiledModel:
    """The entry's `.mlmodelc` at its fixed path, compiled now if absent or corrupt.

    Raises BackendFailure("conversion_failed") when the compile fails or leaves no
    `.mlmodelc`; an OSError moving or recording the compiled model propagates.
    """
    root = model.path.parent
    target = model.compiled_path
    record = model.path / COMPILED_MANIFEST_NAME
    with _locked(root, model.key):
        if target.exists():
            try:
                facts = _read_json(record)
                if facts.get("package_manifest") != _manifest_digest(model.path):
                    raise CorruptEntry("compiled model belongs to an older package")
                _check_files(target, facts.get("files"))
                return CompiledModel(target, 0.0, False)
            except CorruptEntry:
                record.unlink(missing_ok=True)
                _discard(target)
        # A fresh compile at this path: earlier loads and compute plans say nothing about it.
        shutil.rmtree(model.path / LOADS_DIR, ignore_errors=True)
        shutil.rmtree(model.path / PLANS_DIR, ignore_errors=True)
        record.unlink(missing_ok=True)
        work = model.path / f".tmp-{secrets.token_hex(4)}.mlmodelc"
        t0 = time.perf_counter()
        try:
            try:
                compiler(model.package, work)
            except Exception as exc:
                raise BackendFailure(
                    "conversion_failed",
                    f"{model.phase} {model.precision}: compiling to .mlmodelc failed: "
                    f"{type(exc).__name__}: {exc}") from exc
            if not work.is_dir():
                raise BackendFailure("conversion_failed",
                                     f"{model.phase} {model.precision}: the compiler left no "
                                     f".mlmodelc at {work}")
            seconds = time.perf_counter() - t0
            _fsync_tree(work)
            facts = {"package_manifest": _manifest_digest(model.path),
                     "compile_seconds": seconds, "files": _file_table(work)}
            os.rename(work, target)
            _write_json(record, facts)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
        return CompiledModel(target, seconds, True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` as JSON to `path` atomically (temporary file, fsync, rename)."""

    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")

    atomic_write(path, write)


def _manifest_digest(entry: Path) -> str:
    try:
        return hashlib.sha256((entry / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        return ""


def first_load(compiled: Path, compute_units: str) -> bool:
    """Whether no load of this `.mlmodelc` path with these compute units has been recorded."""
    return not (compiled.parent / LOADS_DIR / f"{compute_units}.json").exists()


def record_load(compiled: Path, compute_units: str, seconds: float) -> None:
    """Record the first load of this `.mlmodelc` path with these compute units and how long it
    took (seconds), so later loads are known to be warm; a recorded one is kept as it is."""
    path = compiled.parent / LOADS_DIR / f"{compute_units}.json"
    if path.exists():
        return
    facts = {"first_load_seconds": seconds, "time": time.time(), "path": str(compiled)}
    _write_json(path, facts)
