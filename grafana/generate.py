#!/usr/bin/env python3
"""Write soakd's Grafana dashboards (grafana/dashboards/*.json) from grafana/soakd_dashboards/.

    python grafana/generate.py           # rewrite the JSON files
    python grafana/generate.py --check   # exit 1 if a committed file differs from the output

The committed JSON must equal this script's output (tests/grafana/test_dashboards.py checks it).
Only the standard library, daemon/levels.py (the thermal level names) and daemon/clitools.py
(writing or checking the files) are used. Every metric and label in a query must exist in
`daemon/metric_catalog.py` or be a recorded series from
`grafana/prometheus/rules/soakd-recording.yml`; the tests check that too.

Template variables ($instance, $phase, $backend, $precision) are always matched with `=~`,
so "All" (a regex) and multi-value selections work; `$__rate_interval` and `$__range` are
Grafana's own interval variables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARD_DIR = HERE / "dashboards"
# As a script (python grafana/generate.py) or loaded by a test: the dashboards package lives
# beside this file and uses daemon/levels.py from the repository root.
for _path in (str(HERE), str(HERE.parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from soakd_dashboards.fleet import fleet  # noqa: E402
from soakd_dashboards.power_thermal import power_thermal  # noqa: E402
from soakd_dashboards.stability import stability  # noqa: E402

from daemon.clitools import write_or_check  # noqa: E402

DASHBOARDS = {
    "soakd-stability.json": stability,
    "soakd-power-thermal.json": power_thermal,
    "soakd-fleet.json": fleet,
}


def render_all() -> dict[str, str]:
    """File name -> JSON text, exactly as committed (2-space indent, UTF-8, final newline)."""
    return {name: json.dumps(build().render(), indent=2, ensure_ascii=False) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards (or with --check compare them); exit 1 when a file is out of date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a committed file differs")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="output folder")
    args = parser.parse_args(argv)
    return write_or_check(render_all(), args.out, args.check, "python grafana/generate.py")


if __name__ == "__main__":
    sys.exit(main())
