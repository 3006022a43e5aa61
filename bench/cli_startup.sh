#!/usr/bin/env bash
# Wall time of the light `soakd` commands (issue 10 item 4: no torch import, target < 0.5 s) and
# the slowest imports of `soakd --help`. Needs hyperfine (apt-get install hyperfine).
#   bench/cli_startup.sh [PYTHON]        (default: .venv/bin/python), from the repository root
set -euo pipefail
python=${1:-.venv/bin/python}
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
"$python" - "$state" <<'PY'
import sys, time
from pathlib import Path
from daemon.journal import Journal
from daemon.records import SliceRow
journal = Journal(Path(sys.argv[1]) / "journal.sqlite3")
start = time.time() - 100
rotation = journal.start_rotation("ci", "schedule", "cpu", started_at=start)
journal.add_slice(rotation, SliceRow(phase="matmul", requested_backend="cpu", backend="cpu", precision="fp32",
                                     started_at=start, ended_at=start + 2, steps=5, seconds=1.0, flop=1e9))
journal.end_rotation(rotation, "completed", ended_at=start + 3)
journal.close()
PY
capture=tests/fixtures/powermetrics/M1Pro_text_EEDC_1.txt
uptime
hyperfine -N --warmup 2 --runs 10 -i --style basic \
  -n "soakd --help" "$python -m daemon.cli --help" \
  -n "soakd status" "$python -m daemon.cli status --state-dir $state" \
  -n "soakd history" "$python -m daemon.cli history --state-dir $state" \
  -n "soakd trigger" "$python -m daemon.cli trigger --state-dir $state" \
  -n "soakd replay-powermetrics" "$python -m daemon.cli replay-powermetrics $capture"
echo "slowest imports of soakd --help (python -X importtime; microseconds: self | cumulative | module):"
"$python" -X importtime -m daemon.cli --help 2>&1 >/dev/null | sort -t'|' -k2 -n -r | head -10
