"""soakd's runner throughput against a bare torch loop of the same model, interleaved.

For each phase and precision, one backend workload is prepared (the phase's model and fixed
inputs on the device, exactly as a worker prepares it: on CUDA channels_last for the conv net
and a CUDA graph per step), then each round runs three timed sides in a rotating order:

  A  soakd: `workloads.measure.measure()` on that workload for --seconds (the worker's own
     step loop: synchronised segments, event marks); throughput is what soakd reports, its
     steps over its measured seconds. A wall-clock rate over the same run, which also counts
     the work between segments, is shown beside it.
  B  bare, with the same technique: the same model and input tensors; where soakd replays a
     CUDA graph, the bare side captures a graph of its own and replays it
         sync; t0; for _ in range(n): graph.replay()   (or model(*inputs) eager); sync; t1
     with n = the steps soakd did in the A run of the round.
  B' the same bare loop again: B/B' is the bare-vs-bare spread, the noise floor a soakd/bare
     ratio is read against.

Target: soakd / bare >= 0.99, or within the bare-vs-bare spread, for every row. Imports only
workloads.*, torch, numpy, psutil (so it runs on a machine with the bare ML stack). Run from the repository root, e.g.

  python bench/bench_runner_vs_torch.py --device cuda --precisions fp32,fp16,bf16
  python bench/bench_runner_vs_torch.py --device cpu --precisions fp32 --seconds 1 \
      --set matmul.n=256 --set conv.size=64 --set conv.batch=1 --set attention.seq=256
"""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from daemon.clitools import comma_list
from workloads.backends import get_backend
from workloads.backends.base import PRECISIONS, BackendFailure
from workloads.backends.torch_backend import TorchWorkload
from workloads.host import chip
from workloads.measure import CheckState, measure
from workloads.phases import PHASE_NAMES, PROFILES, PhaseSpec, Profile, get_profile
from workloads.protocol import RunSlice, SliceDone, WorkerEvent

TARGET = 0.99  # soakd / bare, issue 11 ("ratio >= 0.99, or within the bare-vs-bare spread")


@dataclass
class Row:
    """One phase x precision: per round, soakd's steps and seconds (A), the bare loop's steps
    and seconds (B) and the bare loop's seconds again (B'); rates in FLOP/s from
    `flop_per_step`. `skipped` says why a row was not measured ("" when it was)."""

    phase: str
    precision: str
    shape: str
    flop_per_step: int
    soakd_steps: list[int] = field(default_factory=list)
    soakd_seconds: list[float] = field(default_factory=list)  # what soakd reports
    soakd_wall: list[float] = field(default_factory=list)  # wall clock over the same run
    bare_steps: list[int] = field(default_factory=list)
    bare_seconds: list[float] = field(default_factory=list)
    again_seconds: list[float] = field(default_factory=list)  # B', the bare loop once more
    technique: str = ""
    skipped: str = ""

    def rate(self, steps: list[int], seconds: list[float]) -> float:
        """FLOP/s over all rounds: total steps x FLOP per step / total seconds (NaN for 0 s)."""
        total = sum(seconds)
        return sum(steps) * self.flop_per_step / total if total > 0 else math.nan

    @property
    def soakd(self) -> float:
        """soakd's FLOP/s over its own measured seconds (what it reports)."""
        return self.rate(self.soakd_steps, self.soakd_seconds)

    @property
    def soakd_wall_rate(self) -> float:
        """soakd's FLOP/s over the wall time of its runs (work between segments included)."""
        return self.rate(self.soakd_steps, self.soakd_wall)

    @property
    def bare(self) -> float:
        """The bare loop's FLOP/s (B runs only)."""
        return self.rate(self.bare_steps, self.bare_seconds)

    @property
    def ratio(self) -> float:
        """soakd / bare throughput (NaN without a bare rate)."""
        return self.soakd / self.bare if self.bare > 0 else math.nan

    def bare_spread(self) -> float:
        """The largest |B/B' - 1| over the rounds: how far two bare runs differ."""
        return max((abs(b / a - 1.0) for a, b in zip(self.bare_seconds, self.again_seconds, strict=True)
                    if a > 0 and b > 0), default=math.nan)

    def round_ratios(self) -> list[float]:
        """soakd / bare steps per second of each round that has both."""
        out = []
        for s_steps, s_sec, b_steps, b_sec in zip(self.soakd_steps, self.soakd_seconds,
                                                  self.bare_steps, self.bare_seconds, strict=True):
            if s_sec > 0 and b_sec > 0 and b_steps > 0:
                out.append((s_steps / s_sec) / (b_steps / b_sec))
        return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with `profile_obj` (the profile with its --set overrides) added; a bad
    list, number or override exits with argparse's usage error (status 2)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--precisions", default="fp32,fp16,bf16",
                        help="comma list of fp32, fp16, bf16 (default: all three)")
    parser.add_argument("--phases", default=",".join(PHASE_NAMES))
    parser.add_argument("--profile", default="heavy", choices=sorted(PROFILES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="overrides",
                        help="profile override, e.g. matmul.n=512 or conv.batch=1 (repeatable)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="measured seconds of each side in each round (default: 4)")
    parser.add_argument("--rounds", type=int, default=3, help="A/B rounds (default: 3)")
    parser.add_argument("--warmup-seconds", type=float, default=1.0,
                        help="untimed run of both sides before the rounds (default: 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tail-sample-every", type=int, default=None, metavar="N",
                        help="time one group of short CUDA steps in N step by step (soakd: 16); 0 "
                             "turns the sample off, to measure what it costs")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    args.precisions = _comma(parser, args.precisions, PRECISIONS, "precision")
    args.phases = _comma(parser, args.phases, PHASE_NAMES, "phase")
    if not args.seconds > 0 or args.rounds < 1 or args.warmup_seconds < 0:
        parser.error("--seconds must be > 0, --rounds >= 1, --warmup-seconds >= 0")
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = value.strip()
    try:
        args.profile_obj = get_profile(args.profile, overrides)
    except (KeyError, ValueError) as exc:
        parser.error(str(exc))
    return args


def _comma(parser: argparse.ArgumentParser, text: str, allowed: Sequence[str],
           what: str) -> list[str]:
    try:
        return comma_list(text, what, allowed)
    except ValueError as exc:
        parser.error(str(exc))


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (torch.cuda.synchronize; a no-op on the CPU)."""
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def run_soakd(workload: TorchWorkload, spec: PhaseSpec, backend: str, precision: str,
              seconds: float, warmup_steps: int) -> tuple[int, float, float]:
    """One A run: soakd's step loop. Returns (steps, soakd's seconds, wall seconds after warm-up)."""
    done: list[SliceDone] = []

    def emit(event: WorkerEvent) -> None:
        if isinstance(event, SliceDone):
            done.append(event)

    if not workload.warmed_up:
        measure(workload, RunSlice(0, duration_s=None, max_steps=1, warmup_steps=warmup_steps,
                                   check_every=0), emit, state=CheckState())
    started = time.perf_counter()
    measure(workload, RunSlice(1, duration_s=seconds, warmup_steps=warmup_steps, check_every=0),
            emit, state=CheckState())
    wall = time.perf_counter() - started
    return done[-1].steps, done[-1].seconds, wall


def bare_step(workload: TorchWorkload) -> Callable[[], object]:
    """The bare loop's step, with the technique soakd uses: a CUDA graph of its own, captured
    from the same model and inputs, where soakd replays one; else the eager forward pass."""
    model, inputs = workload.model, workload.inputs
    assert model is not None
    if workload.graph is None:
        def eager() -> object:
            with torch.inference_mode():
                return model(*inputs)
        return eager
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(3):
            model(*inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        model(*inputs)
    return graph.replay


def run_bare(step: Callable[[], object], steps: int, sync: Callable[[], None]) -> float:
    """One B run: the bare loop, timed by the wall clock around it."""
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0


def describe(spec: PhaseSpec) -> str:
    """The spec's shape in a few words for the table, e.g. "1x1024x512, 12 layers, 16 heads"."""
    shapes = spec.input_shapes()
    first = next(iter(shapes.values()))
    text = "x".join(str(n) for n in first)
    if spec.name == "conv":
        return f"{text}, {spec.depth} layers"  # type: ignore[union-attr]
    if spec.name == "attention":
        return f"{text}, {spec.layers} layers, {spec.heads} heads"  # type: ignore[union-attr]
    return f"2 x {text}"


def bench_one(profile: Profile, phase: str, precision: str, args: argparse.Namespace,
              log: Callable[[str], None]) -> Row:
    """Prepare one phase at one precision on `args.device` and run `args.rounds` rounds of A,
    B and B' in a rotating order; progress goes to `log`. Never raises for the row: an
    unsupported precision, a failed prepare or an error mid-run is the row's `skipped`."""
    spec = profile.spec(phase)
    row = Row(phase, precision, describe(spec), spec.flop_per_step())
    backend = get_backend(args.device)
    supported = backend.supports(precision)
    if not supported.ok:
        row.skipped = supported.reason
        return row
    try:
        workload = backend.prepare(spec, precision, args.seed)
    except BackendFailure as exc:
        row.skipped = f"{exc.reason}: {exc.detail}"
        return row
    assert isinstance(workload, TorchWorkload) and workload.model is not None
    sync = synchronizer(args.device)
    try:
        steps, _, _ = run_soakd(workload, spec, args.device, precision,
                                max(args.warmup_seconds / 2, 0.1), profile.warmup_steps)
        row.technique = workload.run.technique if workload.run is not None else ""
        step = bare_step(workload)
        if args.warmup_seconds > 0:
            run_bare(step, max(1, steps), sync)
        for index in range(args.rounds):
            # The order rotates (A B B', B A B', B B' A) so that an order effect (clocks,
            # caches, the host's other tenants) spreads over the sides.
            bare_steps = max(1, row.soakd_steps[-1] if row.soakd_steps else steps)
            order = ("ABb", "BAb", "BbA")[index % 3]
            for side in order:
                if side == "A":
                    steps, seconds, wall = run_soakd(workload, spec, args.device, precision,
                                                     args.seconds, profile.warmup_steps)
                elif side == "B":
                    bare_seconds = run_bare(step, bare_steps, sync)
                else:
                    again_seconds = run_bare(step, bare_steps, sync)
            row.soakd_steps.append(steps)
            row.soakd_seconds.append(seconds)
            row.soakd_wall.append(wall)
            row.bare_steps.append(bare_steps)
            row.bare_seconds.append(bare_seconds)
            row.again_seconds.append(again_seconds)
            log(f"  round {index + 1}: soakd {steps} steps / {seconds:.3f} s "
                f"({steps * row.flop_per_step / seconds / 1e12:.3f} TFLOP/s), bare "
                f"{bare_steps} steps / {bare_seconds:.3f} s "
                f"({bare_steps * row.flop_per_step / bare_seconds / 1e12:.3f} TFLOP/s)")
    except Exception as exc:  # an OOM at one precision should not lose the other rows
        row.skipped = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    finally:
        workload.close()
    return row


def device_name(device: str) -> str:
    """The GPU with its CUDA and cuDNN versions, or the CPU with torch's thread count."""
    if device == "cuda":
        index = torch.cuda.current_device()
        return (f"{torch.cuda.get_device_name(index)} (cuda:{index}, CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()})")
    return f"{chip()} ({torch.get_num_threads()} torch threads)"


def tflops(value: float) -> str:
    """FLOP/s as TFLOP/s with three decimals; "-" when not finite."""
    return f"{value / 1e12:.3f}" if math.isfinite(value) else "-"


def render(rows: list[Row], args: argparse.Namespace, argv: Sequence[str]) -> str:
    """The Markdown section for bench/RESULTS.md: command, device, settings, one table row per
    phase x precision, and which rows miss the target."""
    command = shlex.join(["python", "bench/bench_runner_vs_torch.py", *argv])
    overrides = ", ".join(args.overrides) or "none"
    lines = [
        "## soakd runner vs bare torch loop",
        "",
        f"- command: `{command}`",
        f"- device: {device_name(args.device)}",
        f"- host: {chip()}; Python {platform.python_version()}; torch {torch.__version__}",
        f"- profile: {args.profile} (overrides: {overrides}); {args.rounds} rounds, alternating "
        f"which side runs first, {args.seconds:g} s each side, after a {args.warmup_seconds:g} s "
        "untimed warm-up; reference check off; short CUDA steps: one timing group in "
        f"{args.tail_sample_every if args.tail_sample_every is not None else 16} timed step by step (0: off)",
        f"- soakd = steps / soakd's measured seconds; bare = the same step count timed by the "
        f"wall clock, same technique; ratio = soakd / bare (target >= {TARGET}, or within the "
        "bare-vs-bare spread |B/B' - 1|)",
        "",
        "| phase | shape | precision | technique | soakd TFLOP/s | bare TFLOP/s | ratio | round ratios "
        "min-max | bare-vs-bare spread | soakd wall-clock TFLOP/s | steps per round |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.skipped:
            lines.append(f"| {row.phase} | {row.shape} | {row.precision} | | skipped: "
                         f"{row.skipped} | | | | | | |")
            continue
        ratios = row.round_ratios()
        spread = f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "-"
        steps = sorted(row.soakd_steps)
        lines.append(
            f"| {row.phase} | {row.shape} | {row.precision} | {row.technique} | {tflops(row.soakd)} | "
            f"{tflops(row.bare)} | {row.ratio:.3f} | {spread} | {row.bare_spread():.3f} | "
            f"{tflops(row.soakd_wall_rate)} | {steps[len(steps) // 2]} |"
        )
    measured = [row for row in rows if not row.skipped]
    below = [f"{r.phase}/{r.precision}" for r in measured
             if not (r.ratio >= TARGET or abs(r.ratio - 1.0) <= r.bare_spread())]
    lines.append("")
    if not measured:
        lines.append("No row was measured.")
    elif below:
        lines.append(f"Below the {TARGET} target and outside the bare-vs-bare spread: {', '.join(below)}.")
    else:
        lines.append(f"Every measured row meets the {TARGET} target or lies within the bare-vs-bare spread.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every phase x precision and print the table; 1 when the device is not available,
    else 0 (a row that misses the target is reported, not an error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.tail_sample_every is not None:
        import workloads.measure

        workloads.measure.SAMPLE_EVERY_GROUPS = args.tail_sample_every or 2**62
    backend = get_backend(args.device)
    availability = backend.available()
    if not availability.ok:
        print(f"bench: {args.device} is not available: {availability.reason}", file=sys.stderr)
        return 1

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows: list[Row] = []
    started = time.monotonic()
    for phase in args.phases:
        for precision in args.precisions:
            log(f"{phase} {precision} ({time.monotonic() - started:.0f} s elapsed)")
            row = bench_one(args.profile_obj, phase, precision, args, log)
            if row.skipped:
                log(f"  skipped: {row.skipped}")
            rows.append(row)
    print(render(rows, args, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
