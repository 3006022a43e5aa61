"""The seed's micro-benchmark table."""

from __future__ import annotations

import math
import os

from workloads.micro.results import CATEGORIES, CATEGORY_TITLES, MicroRun


def _fmt(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}"


TABLE_HEADER = (f"{'Operation':<30} {'Size':<15} {'Avg (ms)':>12} {'Min (ms)':>12} "
                f"{'Max (ms)':>12} {'Median (ms)':>12} {'GFLOPS':>12} {'GB/s':>12}")


def render_table(run: MicroRun) -> str:
    """The seed's table: a section per category and backend, then a performance summary."""
    lines: list[str] = []
    summary = run.summary()
    several = len(run.backends()) > 1 or bool(run.skipped) or bool(run.failures)
    for backend in run.backends():
        rows = [r for r in run.results if r.backend == backend]
        if several:
            device = run.devices.get(backend, rows[0].device)
            lines += [f"##### backend {backend}: {device} #####", ""]
        for category in CATEGORIES:
            section = [r for r in rows if r.category == category]
            if not section:
                continue
            lines += [f"=== {CATEGORY_TITLES[category]} Benchmark ===", TABLE_HEADER,
                      "-" * len(TABLE_HEADER)]
            for r in section:
                lines.append(
                    f"{r.label:<30} {r.size:<15} {_fmt(r.avg_s, 1e3):>12} {_fmt(r.min_s, 1e3):>12} "
                    f"{_fmt(r.max_s, 1e3):>12} {_fmt(r.median_s, 1e3):>12} "
                    f"{_fmt(r.gflops, digits=2):>12} {_fmt(r.gb_per_s, digits=2):>12}"
                )
            notes = list(dict.fromkeys(r.note for r in section if r.note))
            lines += [f"  note: {n}" for n in notes]
            lines.append("")
        peak = summary[backend]
        lines += [
            "=== Performance Summary ===",
            f"Peak Compute Performance: {_fmt(peak['peak_gflops'], digits=2)} GFLOPS"
            f"  ({peak['peak_gflops_at']})",
            f"Peak Memory Bandwidth:    {_fmt(peak['peak_gb_per_s'], digits=2)} GB/s"
            f"  ({peak['peak_gb_per_s_at']})",
            f"Launch Overhead (median): {_fmt(peak['launch_overhead_s'], 1e3)} ms",
            "",
        ]
    lines.append(f"profile {run.profile.name}: {run.profile.warmup} warm-up, "
                 f"{run.profile.iterations} timed iterations per op and size "
                 f"({run.profile.launch_iterations} for launch), dtype {run.dtype}; "
                 "GFLOPS and GB/s from the median time; 1K = 1,000 elements")
    if run.device_warmup_s:
        lines.append("device warm-up before the first case (not in the numbers): " + ", ".join(
            f"{backend} {seconds:.2f} s" for backend, seconds in run.device_warmup_s.items()))
    start, end = run.load_average.get("start"), run.load_average.get("end")
    if start is not None and end is not None:
        lines.append(f"host load average (1 min): {start:.2f} at start, {end:.2f} at end, "
                     f"on {os.cpu_count()} logical CPUs")
    for backend, reason in run.skipped.items():
        lines.append(f"skipped {backend}: {reason}")
    for backend, detail in run.failures.items():
        lines.append(f"failed {backend}: {detail}")
    return "\n".join(lines)
