"""`soakd replay-powermetrics FILE`: a captured powermetrics log as JSON lines, one per sample.

Each line has `timestamp` (ISO 8601 or null), `elapsed_seconds`, `power_watts` and
`energy_joules` ({component: value}; components cpu, gpu, ane, combined, package, dram; an
Intel Mac's package power is under `package`), `thermal_pressure` (canonical level or null),
`gpu_frequency_hz` (or null), plus `cluster_frequency_hz`, `hw_model` and `os_build`.
Exit 0 on a readable file; a one-line error and exit 1 when the file is not powermetrics
output, 2 when it cannot be read at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from daemon.clitools import EX_FAILURE, UsageError
from daemon.sources.powermetrics import PowermetricsParseError
from daemon.sources.replay import FORMATS, load_samples


def register(subparsers: Any) -> None:
    """Add `soakd replay-powermetrics` to the CLI's sub-parsers."""
    parser = subparsers.add_parser(
        "replay-powermetrics",
        help="print a captured powermetrics log (plist or text) as JSON lines",
        description="Parse a captured powermetrics output file and print one JSON object "
                    "per sample (energy in J, power in W, frequency in Hz).")
    parser.add_argument("file", metavar="FILE", help="powermetrics output (-f plist or text)")
    parser.add_argument("--format", default="auto", choices=FORMATS, dest="fmt",
                        help="input format (default: auto-detect)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the file's samples as JSON lines; exit codes in the module docstring.

    Raises UsageError (one line, exit 2) when the file cannot be read.
    """
    try:
        samples = load_samples(args.file, args.fmt)
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    except PowermetricsParseError as exc:
        print(f"soakd replay-powermetrics: error: {args.file}: {exc}", file=sys.stderr)
        return EX_FAILURE
    for sample in samples:  # `| head` closing the pipe is handled (quietly) in daemon.cli.main
        sys.stdout.write(json.dumps(sample.to_json(), allow_nan=False) + "\n")
    return 0
