"""soakd's micro suite next to the same ops timed with bare torch, interleaved in one process.

For every op and size of `workloads.micro` on one device, this alternates rounds of
soakd's measurement (`measure_case` with the backend's own clock) and a plain torch loop
written here from scratch (its own tensors; per-iteration `torch.cuda.Event` pairs on CUDA,
`time.perf_counter` around the call elsewhere; the launch op synchronises every iteration
on both sides). Both sides run the same torch call (the suite's kernels, `out=` forms
included), so a ratio far from 1 points at soakd's harness, not at torch. Each side's
number is the median over rounds of its per-round median; rounds alternate which side
goes first.

    .venv/bin/python bench/micro_vs_torch.py --device cpu
    .venv/bin/python bench/micro_vs_torch.py --device cuda --iterations 200 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

from workloads.backends import get_backend
from workloads.backends.torch_backend import TORCH_DTYPES, TorchBackend
from workloads.host import host_info
from workloads.micro.cases import build_cases
from workloads.micro.measure import measure_case, warm_up_device

Op = Callable[[], object]


def bare_op(op: str, n: int, device: torch.device, dtype: torch.dtype) -> Op:
    """The suite's op `op` at size `n`, written with plain torch calls and fresh tensors
    (n x n matrices for matmul, n-element vectors otherwise). Raises ValueError for an op
    the suite does not have."""
    pinned = device.type == "cuda"
    if op == "matmul":
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        c = torch.empty(n, n, device=device, dtype=dtype)
        return lambda: torch.mm(a, b, out=c)
    x = torch.randn(n, device=device, dtype=dtype)
    y = torch.randn(n, device=device, dtype=dtype)
    if op == "add":
        z = torch.empty(n, device=device, dtype=dtype)
        return lambda: torch.add(x, y, out=z)
    if op == "mul":
        z = torch.empty(n, device=device, dtype=dtype)
        return lambda: torch.mul(x, y, out=z)
    if op == "sum":
        s = torch.empty((), device=device, dtype=dtype)
        return lambda: torch.sum(x, dim=0, out=s)
    if op == "h2d":
        src = torch.randn(n, dtype=dtype)
        src = src.pin_memory() if pinned else src
        return lambda: y.copy_(src, non_blocking=pinned)
    if op == "d2h":
        dst = torch.empty(n, dtype=dtype, pin_memory=pinned)
        return lambda: dst.copy_(x, non_blocking=pinned)
    if op == "relu":
        return lambda: torch.clamp_min(x, 0.0, out=y)
    if op == "gelu":
        return lambda: torch.ops.aten.gelu.out(x, out=y)
    if op == "launch":
        one = torch.zeros(1, device=device, dtype=dtype)
        return lambda: one.add_(1)
    raise ValueError(f"no bare version of {op!r}")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA, MPS; nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


def bare_times(fn: Op, device: torch.device, warmup: int, iterations: int,
               sync_each: bool) -> list[float]:
    """Seconds per call: CUDA event pairs around each call; perf_counter around call + sync."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cpu":  # nothing to synchronise: the bare minimum around the call
        out = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out
    if device.type == "cuda" and not sync_each:
        pairs = []
        for _ in range(iterations):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1000.0 for s, e in pairs]
    synced = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        synced.append(time.perf_counter() - t0)
    return synced


def compare(device_name: str, iterations: int, warmup: int, rounds: int,
            dtype_name: str) -> tuple[str, list[dict[str, Any]]]:
    """(device label, one row per op and size): each row's soakd and bare medians in seconds
    (the median over rounds of each round's median) and their ratio soakd / bare. Raises
    SystemExit with a message when `device_name` is not an available torch backend."""
    backend = get_backend(device_name)
    if not isinstance(backend, TorchBackend):
        raise SystemExit(f"{device_name} is not a torch backend")
    availability = backend.available()
    if not availability.ok:
        raise SystemExit(f"{device_name} unavailable: {availability.reason}")
    device = backend.device()
    dtype = TORCH_DTYPES[dtype_name]
    clock = backend.make_clock()
    label = backend.device_label()
    rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        warm_up_device(device, dtype, clock, 1.0)  # both sides start on a warm device
        for case in build_cases(device, dtype):
            bare = bare_op(case.op, case.n, device, dtype)
            soakd_medians: list[float] = []
            bare_medians: list[float] = []
            for r in range(rounds):
                order = ("soakd", "bare") if r % 2 == 0 else ("bare", "soakd")
                for side in order:
                    if side == "soakd":
                        result = measure_case(case, clock, warmup, iterations,
                                              backend=device_name, device=label, dtype=dtype_name)
                        soakd_medians.append(result.median_s)
                    else:
                        times = bare_times(bare, device, warmup, iterations, case.sync_each)
                        bare_medians.append(statistics.median(times))
            soakd_s = statistics.median(soakd_medians)
            bare_s = statistics.median(bare_medians)
            rows.append({
                "category": case.category, "op": case.op, "label": case.label,
                "size": case.size, "soakd_median_s": soakd_s, "bare_median_s": bare_s,
                "ratio": soakd_s / bare_s if bare_s > 0 else math.nan,
            })
            del bare
    return label, rows


def render(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table (medians in µs) with the ratios' geometric mean, min and max."""
    header = (f"{'Operation':<24} {'Size':<11} {'soakd median (us)':>18} "
              f"{'bare median (us)':>17} {'ratio':>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['label']:<24} {row['size']:<11} {row['soakd_median_s'] * 1e6:>18.2f} "
                     f"{row['bare_median_s'] * 1e6:>17.2f} {row['ratio']:>7.3f}")
    ratios = [r["ratio"] for r in rows if math.isfinite(r["ratio"]) and r["ratio"] > 0]
    if ratios:
        geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
        lines.append("")
        lines.append(f"ratio = soakd / bare; geometric mean {geo:.3f}, "
                     f"min {min(ratios):.3f}, max {max(ratios):.3f} over {len(ratios)} rows")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Compare every op and size on --device and print the table (or JSON with --json); 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--device", choices=("cpu", "cuda", "mps"), default="cuda")
    parser.add_argument("--iterations", type=int, default=100, help="timed calls per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    parser.add_argument("--dtype", choices=tuple(TORCH_DTYPES), default="fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--iterations and --rounds must be at least 1, --warmup at least 0")
    started = time.perf_counter()
    label, rows = compare(args.device, args.iterations, args.warmup, args.rounds, args.dtype)
    elapsed = time.perf_counter() - started
    if args.json:
        json.dump({"host": host_info(), "device": label, "dtype": args.dtype,
                   "iterations": args.iterations, "warmup": args.warmup, "rounds": args.rounds,
                   "rows": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"device {label}, torch {torch.__version__}, dtype {args.dtype}; {args.rounds} rounds x "
          f"{args.iterations} iterations (+{args.warmup} warm-up) per side, interleaved; "
          f"{elapsed:.1f} s")
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
