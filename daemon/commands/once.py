"""`soakd once`: one rotation in the foreground, a table per phase x backend (or --json)."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from daemon.clitools import UsageError, comma_list, device_indices
from daemon.commands import coreml_overhead
from daemon.verdicts import DEFAULT_PASS_MARK, stability_score
from workloads.backends import parse_backends, parse_precisions
from workloads.baseline import POLICIES
from workloads.host import host_info
from workloads.phases import MODES, PHASE_NAMES, PROFILES, get_profile
from workloads.protocol import Steps
from workloads.rotation import (
    PhaseStarted,
    RotationEvent,
    RotationPlan,
    RotationRunner,
    SliceContext,
    SliceEnded,
)
from workloads.runner import summarize


def register(subparsers: Any) -> None:
    """Add `soakd once` to the CLI's sub-parsers."""
    parser = subparsers.add_parser("once", help="run one rotation now and print the results")
    add_workload_arguments(parser)
    parser.add_argument("--pass-mark", type=float, default=DEFAULT_PASS_MARK, metavar="RATIO",
                        help="stability score (worst slice / best slice) that passes (default: "
                             f"{DEFAULT_PASS_MARK}, 3DMark's)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a rotation: profile, backends, phases, precision, duration, mode."""
    parser.add_argument("--profile", default="light", choices=sorted(PROFILES),
                        help="shapes and durations (default: light)")
    parser.add_argument("--backends", default="auto",
                        help="comma list of backends or 'auto' (default: auto)")
    parser.add_argument("--phases", default=",".join(PHASE_NAMES),
                        help=f"comma list of phases (default: {','.join(PHASE_NAMES)})")
    parser.add_argument("--precision", default="auto",
                        help="comma list of fp32, tf32, fp16, bf16 or auto: bf16 on CUDA, fp16 when a "
                             "Core ML backend is compared, else fp32 (default: auto)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--duration", type=float, metavar="SECONDS",
                       help="seconds per phase (overrides the profile)")
    group.add_argument("--steps", type=int, metavar="N", help="measured steps per backend and phase")
    parser.add_argument("--slice", type=float, metavar="SECONDS", dest="slice_seconds",
                        help="alternate backends in slices of this length")
    parser.add_argument("--devices", default="all", metavar="all|0,1,...",
                        help="device indices of a multi-device backend (CUDA), or all (default)")
    parser.add_argument("--mode", default="alternate", choices=MODES,
                        help="how several backends share a phase (default: alternate)")
    parser.add_argument("--cpu-baseline", choices=POLICIES, default="cached",
                        help="the short CPU run that gives 'speedup vs CPU', before the first phase: "
                             "cached (reuse one measured within a day; default), before (measure "
                             "now), off")
    parser.add_argument("--no-cpu-baseline", action="store_const", const="off", dest="cpu_baseline",
                        help="the same as --cpu-baseline off")


def plan_from_args(args: argparse.Namespace) -> RotationPlan:
    """The rotation the arguments ask for; raises UsageError naming the first bad argument."""
    overrides: dict[str, Any] = {}
    if args.duration is not None:
        if not args.duration > 0:
            raise UsageError(f"--duration must be positive, got {args.duration}")
        overrides["phase_seconds"] = args.duration
    if args.slice_seconds is not None:
        if not args.slice_seconds > 0:
            raise UsageError(f"--slice must be positive, got {args.slice_seconds}")
        overrides["slice_seconds"] = args.slice_seconds
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    try:
        phases = comma_list(args.phases, "phase", PHASE_NAMES)
        profile = get_profile(args.profile, overrides)
        backends = parse_backends(args.backends)
        precisions = parse_precisions(args.precision)
    except (KeyError, ValueError) as exc:
        raise UsageError(str(exc).strip("'\"")) from None
    return RotationPlan(
        profile=profile,
        backends=backends,
        phases=phases,
        precisions=precisions,
        devices=_devices(args.devices),
        mode=args.mode,
        steps=args.steps,
        cpu_baseline=args.cpu_baseline,
    )


def _devices(text: str) -> tuple[str, ...] | None:
    try:
        return device_indices(text)
    except ValueError as exc:
        raise UsageError(f"--devices: {exc}, got {text!r}") from None


class Progress:
    """A one-line progress bar on stderr, only when it is a terminal."""

    def __init__(self, plan: RotationPlan, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.plan = plan
        self.total = 0.0
        self.done = 0.0
        self.started = time.monotonic()

    def __call__(self, context: SliceContext | None, event: RotationEvent) -> None:
        """The rotation's event callback: measured seconds so far over the planned seconds (the
        first phase's planned seconds times phases times precisions)."""
        if not self.enabled:
            return
        if isinstance(event, PhaseStarted) and not self.total:
            self.total = event.planned_seconds * len(self.plan.phases) * len(self.plan.precisions)
        if isinstance(event, Steps):
            self.done += event.seconds
        if context is None:
            return
        fraction = min(1.0, self.done / self.total) if self.total > 0 else 0.0
        width = 24
        bar = "#" * int(fraction * width) + "-" * (width - int(fraction * width))
        label = f"{context.phase} {context.backend} {context.precision}"
        line = f"\r[{bar}] {fraction:4.0%}  {label:<28} {time.monotonic() - self.started:6.0f} s"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        """Erase the progress line."""
        if self.enabled:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()


class LoopRecorder:
    """Each measured slice's throughput (FLOP/s) by (phase, backend, precision, run_key): the
    loops of the stability score (daemon/verdicts.py). Passes every event on to `forward`."""

    def __init__(self, forward: Callable[[SliceContext | None, RotationEvent], None]) -> None:
        self.forward = forward
        self.loops: dict[tuple[str, str, str, str | None], list[float]] = {}

    def __call__(self, context: SliceContext | None, event: RotationEvent) -> None:
        """The rotation's event callback."""
        self.forward(context, event)
        if context is None or context.baseline or not isinstance(event, SliceEnded):
            return
        result = event.result
        if result.seconds > 0 and result.steps > 0:
            key = (context.phase, result.backend, context.precision, result.run.key if result.run else None)
            self.loops.setdefault(key, []).append(float(result.flop) / result.seconds)

    def stability(self, row: dict[str, Any], pass_mark: float) -> dict[str, Any] | None:
        """The stability score of a summarized result row (None for a CPU baseline row)."""
        if row["baseline"]:
            return None
        run = row.get("run") or {}
        loops = self.loops.get((row["phase"], row["backend"], row["precision"], run.get("key")), [])
        score = stability_score(loops, pass_mark)
        return {"score": score.score, "passed": score.passed, "pass_mark": pass_mark, "loops": list(score.loops)}


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value * scale:.{digits}f}"


def render_table(rows: list[dict[str, Any]]) -> str:
    """The `soakd once` table: one line per summarized phase x backend x precision row
    (workloads.runner.summarize's dicts, with `stability` from LoopRecorder: worst slice over best
    slice, "-" with fewer than two), then the fallbacks with their reasons."""
    header = (f"{'phase':<10} {'backend':<16} {'prec':<5} {'steps/s':>10} {'TFLOP/s':>9} "
              f"{'p50 ms':>9} {'p99 ms':>9} {'vs CPU':>7} {'success':>8} {'mism':>5} {'rss MiB':>9} "
              f"{'dev MiB':>9} {'stability':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        backend = row["backend"]
        if row["requested_backend"] != backend:
            backend = f"{row['requested_backend']}>{backend}"
        elif row["baseline"]:
            backend = f"{backend} (base{', cached' if row['cached_baseline'] else ''})"
        memory = row["memory_bytes"]
        rss, device = memory["worker_peak_rss"] / 2**20, memory["device_peak"] / 2**20
        latency = row["latency_seconds"]
        speedup = row["speedup_vs_cpu"]
        stability = row.get("stability") or {}
        verdict = "-" if stability.get("score") is None else (
            f"{stability['score']:.3f} {'pass' if stability['passed'] else 'FAIL'}")
        lines.append(
            f"{row['phase']:<10} {backend:<16} {row['precision']:<5} "
            f"{_fmt(row['steps_per_second']):>10} {_fmt(row['flop_per_second'], 1e-12, 3):>9} "
            f"{_fmt(latency['p50'], 1e3, 3):>9} {_fmt(latency['p99'], 1e3, 3):>9} "
            f"{_fmt(speedup, 1, 1) + 'x' if speedup else '-':>7} "
            f"{row['success_rate']:>8.0%} {row['mismatches']:>5} {rss:>9.0f} {device:>9.0f} {verdict:>10}"
        )
    notes = [f"  {r['phase']} {r['requested_backend']} -> {r['backend']}: {r['fallback']['reason']}: "
             f"{r['fallback']['detail']}" for r in rows if r["fallback"]]
    if notes:
        lines += ["", "fallbacks:", *notes]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run one rotation in worker processes and print its table (or JSON); exit 0."""
    plan = plan_from_args(args)
    if not 0 < args.pass_mark <= 1:
        raise UsageError(f"--pass-mark must be in (0, 1], got {args.pass_mark}")
    progress = Progress(plan)
    loops = LoopRecorder(progress)
    runner = RotationRunner(plan, loops)
    try:
        results = runner.run()
    finally:
        progress.close()
    rows = summarize(results)
    for row in rows:
        row["stability"] = loops.stability(row, args.pass_mark)
    overhead = coreml_overhead.overhead_for_backends(runner.backends)  # None without Core ML
    if args.json:
        document = {"host": host_info(), "profile": plan.profile.name, "results": rows}
        if overhead is not None:
            document["coreml_conversion_overhead"] = overhead
        json.dump(document, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(render_table(rows))
        if overhead is not None:
            print("\n" + coreml_overhead.render_for_once(overhead))
    return 0
