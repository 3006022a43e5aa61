"""Core ML conversion of the heavy phases: wall time and peak memory of each conversion.

A user's first heavy rotation on a Mac pays this before the first Core ML step (issue 18,
item 4). Each case runs in its own child process, so each peak is that conversion's alone:

  1. import torch, coremltools and soakd's workloads; read the RSS (the baseline);
  2. `workloads.coreml_convert.ensure_model(spec, precision, seed, root=<empty temp dir>)`:
     build the model, trace it, convert it to an ML Program, save it, checksum and fsync it
     and write its manifest (exactly what soakd does on a cache miss), timed with a wall clock;
  3. read the RSS high-water mark (`resource.getrusage(RUSAGE_SELF).ru_maxrss`: the most
     resident memory the process ever had, imports and model included), the package's size
     on disk, and the converted program's op counts (`workloads.coreml_convert.program_ops`).

Cases: matmul, conv, attention (standard layout) and attention:ane (the Neural Engine layout,
workloads/ane_transformer.py). Compiling (`.mlmodelc`) and loading need macOS and are not
measured here. Run from the repository root:

  python bench/bench_coreml_convert.py                       # heavy, fp16, all four cases
  python bench/bench_coreml_convert.py --profile ci --cases attention,attention:ane
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

CASES: tuple[str, ...] = ("matmul", "conv", "attention", "attention:ane")
COUNTED_OPS: tuple[str, ...] = ("conv", "linear", "matmul", "transpose", "reshape")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with `case_list` (the chosen cases, in order) added; an unknown case
    exits with argparse's usage error (status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="heavy", help="phase shapes (default: heavy)")
    parser.add_argument("--precision", default="fp16", choices=("fp16", "fp32"),
                        help="model precision (default fp16, what coreml-ane runs)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma list from {', '.join(CASES)} (phase[:variant])")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one case, in this process
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)} (choose from {', '.join(CASES)})")
    args.case_list = cases
    return args


def peak_rss_bytes() -> int:
    """This process's RSS high-water mark (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_case(case: str, profile_name: str, precision: str, seed: int) -> dict[str, Any]:
    """Convert one case into an empty cache and measure it (call in a fresh process)."""
    from importlib import metadata

    import coremltools  # noqa: F401  (imported before the baseline, like a worker would)
    import torch

    from workloads.coreml_convert import ensure_model, program_ops
    from workloads.phases import AttentionSpec, get_profile

    phase, _, variant = case.partition(":")
    spec = get_profile(profile_name).spec(phase)
    if variant and isinstance(spec, AttentionSpec):
        spec = replace(spec, variant=variant)
    baseline = psutil.Process().memory_info().rss
    with tempfile.TemporaryDirectory(prefix="soakd-convert-bench-") as root:
        t0 = time.perf_counter()
        model = ensure_model(spec, precision, seed, root=Path(root))
        wall = time.perf_counter() - t0
        peak = peak_rss_bytes()
        ops = Counter(op.type for op in program_ops(model.package))
        size = _tree_bytes(model.package)
    return {
        "case": case, "profile": profile_name, "precision": precision,
        "flop_per_step": spec.flop_per_step(), "input_shapes": spec.input_shapes(),
        "wall_seconds": wall, "conversion_seconds": model.conversion_seconds,
        "peak_rss_bytes": peak, "baseline_rss_bytes": baseline, "package_bytes": size,
        "ops": {name: ops.get(name, 0) for name in COUNTED_OPS},
        "ops_total": sum(n for name, n in ops.items() if name != "const"),
        "torch": torch.__version__, "coremltools": metadata.version("coremltools"),
    }


def machine() -> str:
    """This machine in one line: CPU model, logical CPUs, RAM (GiB), OS and Python version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return (f"{cpu}, {os.cpu_count()} logical CPUs, {memory:.0f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def render(rows: list[dict[str, Any]], argv: Sequence[str], load_at_start: str) -> str:
    """The Markdown block for bench/RESULTS.md: the command, the machine, the load averages and
    one table row per case (seconds, GiB, MiB, op counts), failed cases with their error."""
    command = "python bench/bench_coreml_convert.py " + " ".join(shlex.quote(a) for a in argv)
    first = rows[0] if rows else {}
    lines = [
        f"`{command.strip()}`",
        "",
        f"- machine: {machine()}",
        f"- torch {first.get('torch', '?')}, coremltools {first.get('coremltools', '?')}",
        f"- load average (1, 5, 15 min) at start: {load_at_start}; at the end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
        "| case | wall s | convert s | peak RSS GiB | RSS after imports GiB | package MiB | "
        + " | ".join(COUNTED_OPS) + " | ops |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(COUNTED_OPS) + "---:|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['case']} | failed: {row['error']} |")
            continue
        counts = " | ".join(str(row["ops"][name]) for name in COUNTED_OPS)
        lines.append(
            f"| {row['case']} | {row['wall_seconds']:.1f} | {row['conversion_seconds']:.1f} | "
            f"{row['peak_rss_bytes'] / 2**30:.2f} | {row['baseline_rss_bytes'] / 2**30:.2f} | "
            f"{row['package_bytes'] / 2**20:.1f} | {counts} | {row['ops_total']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run each case in a child process and print the table; 0 when every case converted, else 1.

    With the hidden `--child CASE`, run that one case here and print its row as JSON.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_case(args.child, args.profile, args.precision, args.seed)))
        return 0
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows: list[dict[str, Any]] = []
    for case in args.case_list:
        print(f"converting {case} ({args.profile}, {args.precision}) ...", file=sys.stderr,
              flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--child", case, "--profile", args.profile,
             "--precision", args.precision, "--seed", str(args.seed)],
            capture_output=True, text=True, check=False)
        lines = child.stdout.strip().splitlines()
        if child.returncode != 0 or not lines:
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"case": case, "error": f"exit {child.returncode}: {tail}"})
            continue
        rows.append(json.loads(lines[-1]))
    print(render(rows, argv, load))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
