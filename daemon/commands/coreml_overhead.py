"""`soakd coreml-overhead`: the torch <-> Core ML input/output conversion cost (seed 004)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from daemon.clitools import UsageError
from workloads.backends import COREML_BACKENDS

# `soakd once` runs fewer iterations: it is a by-product there, not the point.
ONCE_ITERATIONS = 50


def register(subparsers: Any) -> None:
    """Add `soakd coreml-overhead` to the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "coreml-overhead",
        help="time torch tensor -> Core ML input -> torch for seed 004's shapes",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--iterations", type=int, default=100, metavar="N",
                        help="timed iterations per shape and dtype (default: 100)")
    parser.add_argument("--warmup", type=int, default=10, metavar="N",
                        help="untimed iterations first (default: 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure and print the conversion cost (table or JSON); exit 0, 2 for bad arguments.

    Raises UsageError (one line, exit 2) for --iterations below 1 or a negative --warmup.
    """
    from workloads.coreml_overhead import measure_overhead, render_overhead

    if args.iterations < 1:
        raise UsageError(f"--iterations must be at least 1, got {args.iterations}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must not be negative, got {args.warmup}")
    document = measure_overhead(iterations=args.iterations, warmup=args.warmup)
    if args.json:
        json.dump(document, sys.stdout, indent=2, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(render_overhead(document))
    return 0


def overhead_for_backends(backends: Sequence[str],
                          iterations: int = ONCE_ITERATIONS) -> dict[str, Any] | None:
    """The benchmark when any Core ML backend is among `backends`, else None (for `soakd once`).

    A failure is returned as {"error": "..."}, never raised: it must not sink the rotation.
    """
    from workloads.coreml_overhead import measure_overhead

    if not any(name in COREML_BACKENDS for name in backends):
        return None
    try:
        return measure_overhead(iterations=iterations, warmup=min(10, iterations))
    except Exception as exc:  # a side measurement never sinks the rotation's results
        return {"error": f"{type(exc).__name__}: {exc}"}


def render_for_once(document: dict[str, Any]) -> str:
    """The text block `soakd once` prints under its table for `overhead_for_backends`' result."""
    from workloads.coreml_overhead import render_overhead

    if "error" in document:
        return f"Core ML conversion overhead: failed: {document['error']}"
    return render_overhead(document)
