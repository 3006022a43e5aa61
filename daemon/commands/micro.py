"""`soakd micro`: the micro-benchmark suite (seed 002), a table per backend (or --json).

Each backend runs in a spawned child worker, as it does when the daemon runs the suite on
SIGUSR2; an unavailable backend (or a Core ML one) is reported on one line and skipped.
Exit status: 0 when every runnable backend finished; 1 when one failed or none could run;
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from daemon.clitools import UsageError
from workloads.backends import parse_backends
from workloads.micro import MICRO_PROFILES, MicroResult, MicroRun, get_micro_profile, render_table
from workloads.micro.run import run_micro_in_worker


def register(subparsers: Any) -> None:
    """Add `soakd micro` to the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "micro", help="run the micro-benchmark suite (matmul, element-wise, reduction, "
                      "transfer, activations, launch overhead)")
    parser.add_argument("--profile", default="light", choices=list(MICRO_PROFILES),
                        help="iteration counts (default: light; ci is a few seconds)")
    parser.add_argument("--backends", default="auto",
                        help="comma list of torch backends (cpu, cuda, mps) or 'auto' "
                             "(default: auto)")
    parser.add_argument("--iterations", type=int, metavar="N",
                        help="timed iterations per op and size (overrides the profile)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


class Progress:
    """A one-line progress note on stderr, only when it is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream: TextIO = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.count = 0

    def __call__(self, result: MicroResult) -> None:
        """Count one finished op x size and show it (a no-op off a terminal)."""
        if not self.enabled:
            return
        self.count += 1
        line = f"\r{self.count:3d} {result.backend:<5} {result.label} {result.size}"
        self.stream.write(f"{line:<72}")
        self.stream.flush()

    def close(self) -> None:
        """Erase the progress line."""
        if self.enabled and self.count:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run the suite, a worker per backend; print the tables (or JSON). Exit codes: module doc.

    Raises UsageError (one line, exit 2) for an unknown profile or backend or a bad
    iteration count.
    """
    try:
        profile = get_micro_profile(args.profile, args.iterations)
        backends = parse_backends(args.backends)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    progress = Progress()
    try:
        result: MicroRun = run_micro_in_worker(backends, profile, on_result=progress)
    finally:
        progress.close()
    for backend, reason in result.skipped.items():
        print(f"soakd micro: skipped {backend}: {reason}", file=sys.stderr)
    for backend, detail in result.failures.items():
        print(f"soakd micro: {backend} failed: {detail}", file=sys.stderr)
    if not result.results and not result.failures:
        print("soakd micro: no backend could run the suite", file=sys.stderr)
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    elif result.results:
        print(render_table(result))
    return 0 if result.ok else 1
