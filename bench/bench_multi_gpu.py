"""Every GPU of the host at once, against each GPU alone, in one run; and the slow one named.

1. Each GPU alone: `soakd once --profile heavy --backends cuda --devices N` for every phase
   (--alone-seconds per phase, bf16), one GPU after the other.
2. All GPUs at once: bench/bench_soak.py (the real daemon, `devices = "all"`, --phase-seconds
   per phase), which also reports the daemon's outlier verdicts (soakd_device_outlier,
   soakd_device_relative_throughput_ratio, device_outlier journal events).
Prints, per phase and GPU, TFLOP/s alone and together and their ratio (target >= 0.97). Run on a
multi-GPU host from the repository root:

    python bench/bench_multi_gpu.py --phase-seconds 120 --alone-seconds 15 --out /tmp/multi
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PHASES = ("matmul", "conv", "attention")
TARGET = 0.97


def alone(device: str, seconds: float, env: dict[str, str]) -> dict[str, float]:
    """TFLOP/s per phase of one GPU running alone (soakd once)."""
    command = [sys.executable, "-m", "daemon.cli", "once", "--profile", "heavy", "--backends", "cuda",
               "--devices", device, "--phases", ",".join(PHASES), "--duration", str(seconds),
               "--slice", str(seconds), "--cpu-baseline", "off", "--json"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout)["results"]
    return {row["phase"]: row["flop_per_second"] / 1e12 for row in rows if row["steps"]}


def main() -> int:
    """Run both parts and print the comparison; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=120.0)
    parser.add_argument("--slice-seconds", type=float, default=30.0)
    parser.add_argument("--alone-seconds", type=float, default=15.0)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("out/multi"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOAKD_HEAVY_BENCHMARK": "1", "SOAKD_CACHE_DIR": str(args.out / "cache")}
    single = {str(d): alone(str(d), args.alone_seconds, env) for d in range(args.gpus)}
    print(f"alone: {json.dumps(single)}", flush=True)
    soak = args.out / "soak"
    subprocess.run([sys.executable, "bench/bench_soak.py", "--phase-seconds", str(args.phase_seconds),
                    "--slice-seconds", str(args.slice_seconds), "--out", str(soak)], cwd=REPO, env=env,
                   check=True)
    summary: dict[str, Any] = json.loads((soak / "summary.json").read_text())
    print("\n| phase | GPU | alone TFLOP/s | together TFLOP/s | together / alone |")
    print("|---|---|---:|---:|---:|")
    below = []
    for phase in summary["phases"]:
        for device, together in phase["tflops_per_device"].items():
            solo = single.get(device, {}).get(phase["phase"])
            ratio = together / solo if solo else float("nan")
            if not ratio >= TARGET:
                below.append(f"{phase['phase']}/{device}")
            print(f"| {phase['phase']} | {device} | {solo or 0:.1f} | {together:.1f} | {ratio:.3f} |")
    print(f"\nbelow {TARGET}: {', '.join(below) or 'none'}; device outliers named by soakd: "
          f"{summary['device_outliers'] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
