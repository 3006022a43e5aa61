"""Sampler overhead: workload throughput with the telemetry sampler at 1 Hz against without.

Rounds alternate A (sampler off) / B (sampler on) so drift (heat, clocks, other load) hits
both alike. In a B round a fresh `Sampler(default_sources())` is started before the timed
window and stopped after it, so only steady-state sampling is measured. The workload is a
plain torch loop over one phase model from `workloads.phases` (default: the `light` matmul):

    sync; t0; with torch.inference_mode(): for each step: model(**inputs); sync every step; t1

Reported: steps/s per round, on/off throughput ratio (mean of B over mean of A, and the
median of adjacent pair ratios), and the sampler thread's own CPU time (time.thread_time()
read inside the sampler thread) as % of one core. Targets (issue 3): ratio >= 0.995, sampler
CPU < 0.5 % of one core at 1 Hz. Run from the repository root:

    python bench/bench_sampler_overhead.py --device cpu
    python bench/bench_sampler_overhead.py --device cuda --rounds 10 --round-seconds 15
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from daemon.sampler import Sampler, default_sources
from workloads.models import build
from workloads.phases import PHASE_NAMES, get_profile


@dataclass
class Round:
    """One timed round: `steps` in `seconds` of wall time, with the sampler on or off; with it
    on, the sampler thread's CPU seconds and ticks during the round."""

    index: int
    sampler_on: bool
    steps: int
    seconds: float
    sampler_cpu_s: float = 0.0
    sampler_ticks: int = 0

    @property
    def rate(self) -> float:
        """Steps per second."""
        return self.steps / self.seconds


def make_step(device: str, profile: str, phase: str) -> Callable[[], None]:
    """One synchronised forward pass of the profile's phase model (fp32, seed 0) on `device`.
    Raises KeyError for an unknown profile or phase."""
    spec = get_profile(profile).spec(phase)
    model, inputs = build(spec)
    model = model.to(device)
    tensors = {name: tensor.to(device) for name, tensor in inputs.items()}
    sync: Callable[[], None] = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> None:
        with torch.inference_mode():
            model(**tensors)
        sync()

    return step


def run_for(step: Callable[[], None], seconds: float) -> tuple[int, float]:
    """Call `step` until `seconds` have passed (at least once); (steps, elapsed seconds)."""
    steps = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        step()
        steps += 1
        now = time.perf_counter()
        if now >= deadline:
            return steps, now - start


def main(argv: list[str] | None = None) -> int:
    """Run the A/B rounds, print the per-round table, the summary and a RESULTS.md line; 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--profile", default="light")
    parser.add_argument("--phase", default="matmul", choices=PHASE_NAMES)
    parser.add_argument("--rounds", type=int, default=8, help="A/B pairs")
    parser.add_argument("--round-seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0, help="sampler interval, s")
    parser.add_argument("--warmup-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")

    step = make_step(args.device, args.profile, args.phase)
    run_for(step, args.warmup_seconds)

    rounds: list[Round] = []
    health: dict[str, Any] = {}
    for pair in range(args.rounds):
        for sampler_on in (False, True):
            index = len(rounds)
            if not sampler_on:
                steps, seconds = run_for(step, args.round_seconds)
                rounds.append(Round(index, False, steps, seconds))
                continue
            sampler = Sampler(default_sources(), interval_s=args.interval)
            sampler.start()
            cpu_before, ticks_before = sampler.cpu_seconds, sampler.ticks
            steps, seconds = run_for(step, args.round_seconds)
            cpu_after, ticks_after = sampler.cpu_seconds, sampler.ticks
            health = sampler.snapshot().health
            sampler.stop()
            rounds.append(Round(index, True, steps, seconds, cpu_after - cpu_before,
                                ticks_after - ticks_before))
        print(f"pair {pair + 1}/{args.rounds}: off {rounds[-2].rate:.3f} on {rounds[-1].rate:.3f} "
              "steps/s", file=sys.stderr)

    print(f"{'round':>5} {'sampler':>7} {'steps':>7} {'seconds':>8} {'steps/s':>10} "
          f"{'ticks':>5} {'sampler CPU s':>13}")
    for r in rounds:
        print(f"{r.index:>5} {'on' if r.sampler_on else 'off':>7} {r.steps:>7} {r.seconds:>8.2f} "
              f"{r.rate:>10.3f} {r.sampler_ticks if r.sampler_on else '':>5} "
              f"{r.sampler_cpu_s if r.sampler_on else '':>13}")

    off = [r.rate for r in rounds if not r.sampler_on]
    on = [r for r in rounds if r.sampler_on]
    ratio = statistics.mean(r.rate for r in on) / statistics.mean(off)
    pair_ratios = [rounds[i + 1].rate / rounds[i].rate for i in range(0, len(rounds), 2)]
    on_seconds = sum(r.seconds for r in on)
    cpu_percent = 100.0 * sum(r.sampler_cpu_s for r in on) / on_seconds
    ticks = sum(r.sampler_ticks for r in on)
    per_tick_ms = 1000.0 * sum(r.sampler_cpu_s for r in on) / ticks if ticks else float("nan")
    sources = ", ".join(f"{name}({'up' if h.up else 'down'})" for name, h in health.items())
    print()
    print(f"throughput ratio on/off: {ratio:.4f} (mean of {len(on)} on / {len(off)} off rounds); "
          f"median pair ratio {statistics.median(pair_ratios):.4f}, "
          f"min {min(pair_ratios):.4f}, max {max(pair_ratios):.4f}")
    print(f"sampler thread CPU: {cpu_percent:.3f} % of one core at {1 / args.interval:g} Hz "
          f"({per_tick_ms:.2f} ms per tick, {ticks} ticks)")
    print(f"sources: {sources}")
    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() \
        or platform.machine()
    print()
    print("RESULTS.md line:")
    print(f"| sampler overhead | {args.device} ({device}, {torch.get_num_threads()} threads) | "
          f"{args.profile} {args.phase}, {args.rounds}x A/B x {args.round_seconds:g} s | "
          f"ratio {ratio:.4f} (median pair {statistics.median(pair_ratios):.4f}) | "
          f"sampler CPU {cpu_percent:.3f} % of one core @ {1 / args.interval:g} Hz | {sources} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
