"""What a phase's warm-up costs on CUDA, piece by piece: the hand-over at a phase boundary.

A worker prepared ahead (model on the GPU, no device step) takes over at the phase boundary and
warms up there: plain steps on a side stream (lazy initialisation of the CUDA libraries and
kernel modules happens in the first), then the CUDA-graph capture and one replay. This times
each piece for every heavy phase in a fresh process per phase, so nothing is warm from another
phase. Run on a GPU host from the repository root:

    python bench/warmup_probe.py [--profile heavy] [--precision bf16]

Prints one JSON line per phase: seconds for the first, second and third plain step, the capture
and the replay (each synchronised), and the steady step after them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def probe_phase(phase: str, profile: str, precision: str) -> dict[str, float | str]:
    """Time the warm-up pieces of `phase` in this process (which must not have run CUDA work)."""
    import torch

    from workloads.backends import get_backend
    from workloads.backends.base import PrepareOptions
    from workloads.phases import get_profile

    spec = get_profile(profile).spec(phase)
    workload = get_backend("cuda").prepare(spec, precision, 0, PrepareOptions())
    out: dict[str, float | str] = {"phase": phase, "run": str(workload.run)}
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for i in range(3):
            started = time.perf_counter()
            workload.step()
            stream.synchronize()
            out[f"plain_step_{i + 1}_s"] = time.perf_counter() - started
    torch.cuda.current_stream().wait_stream(stream)
    started = time.perf_counter()
    workload._capture()  # type: ignore[attr-defined]  # the backend's own capture and replay
    out["capture_and_replay_s"] = time.perf_counter() - started
    started = time.perf_counter()
    workload.graph.replay()  # type: ignore[attr-defined]
    torch.cuda.synchronize()
    out["steady_step_s"] = time.perf_counter() - started
    return out


def main() -> int:
    """Each phase in a fresh child process; one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="heavy")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--phase", help="(internal) probe this phase here")
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(probe_phase(args.phase, args.profile, args.precision)), flush=True)
        return 0
    for phase in ("matmul", "conv", "attention"):
        subprocess.run([sys.executable, __file__, "--phase", phase, "--profile", args.profile,
                        "--precision", args.precision], cwd=REPO, check=True)
    return 0


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    sys.exit(main())
