"""The `soakd` command line as a user meets it: a bare `soakd`, a closed pipe, and commands that
must not import torch (issue 10 items 4 and 7)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from cli_helpers import run_main
from daemon_process import REPO
from fixture_paths import POWERMETRICS

from daemon.journal import Journal
from daemon.records import SliceRow

REPLAY_FILE = POWERMETRICS / "M1Pro_text_EEDC_1.txt"


def soakd(*args: str, stdout: int | None = subprocess.PIPE, env: dict[str, str] | None = None,
          python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *python_flags, "-m", "daemon.cli", *args], cwd=REPO, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=120, check=False, env=env)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory whose journal has one finished ci rotation with two cpu slices."""
    with closing(Journal(tmp_path / "journal.sqlite3")) as journal:
        start = time.time() - 60
        rotation = journal.start_rotation("ci", "schedule", "cpu", started_at=start)
        for i in range(2):
            journal.add_slice(rotation, SliceRow(
                phase="matmul", requested_backend="cpu", backend="cpu", precision="fp32",
                started_at=start + 2 * i, ended_at=start + 2 * i + 1.5, steps=10, seconds=1.0,
                flop=1e9 * (10 - i), energy_joules={"package-0": 5.0}))
        journal.end_rotation(rotation, "completed", ended_at=start + 5)
    return tmp_path


def test_bare_soakd_prints_usage_and_points_to_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main([], capsys)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: soakd ")
    assert "soakd --help" in lines[-1]
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [
    ["status", "--json"],
    ["status"],
    ["history", "--json"],
    ["history"],
    ["replay-powermetrics", str(REPLAY_FILE)],
    ["report", "--out", "{out}"],
], ids=lambda c: " ".join(c[:2]))
def test_a_closed_pipe_is_no_traceback(command: list[str], state: Path, tmp_path: Path) -> None:
    """`soakd status --json | head` where head has already gone: the read end is closed before
    soakd writes, so its first write fails with EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    args = [part.replace("{out}", str(tmp_path / "report")) for part in command]
    if command[0] != "replay-powermetrics":
        args += ["--state-dir", str(state)]
    try:
        done = soakd(*args, stdout=write_end)
    finally:
        os.close(write_end)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.stderr == ""
    assert done.returncode == 141  # 128 + SIGPIPE, as a shell reports `yes | head`: it did write


def imported_modules(importtime: str) -> set[str]:
    """Module names from `python -X importtime` output ("import time: self | cumulative | name")."""
    names = set()
    for line in importtime.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


LIGHT_COMMANDS = [
    (["--help"], 0),
    (["status", "--state-dir", "{state}"], 0),
    (["history", "--state-dir", "{state}"], 0),
    (["trigger", "--state-dir", "{state}"], 1),  # no daemon runs: one line, exit 1
    (["replay-powermetrics", str(REPLAY_FILE)], 0),
]


@pytest.mark.parametrize(("command", "code"), LIGHT_COMMANDS, ids=lambda c: c[0] if isinstance(c, list) else "")
def test_light_commands_do_not_import_torch(command: list[str], code: int, state: Path) -> None:
    done = soakd(*(part.replace("{state}", str(state)) for part in command), python_flags=("-X", "importtime"))
    assert done.returncode == code, done.stderr[-2000:]
    modules = imported_modules(done.stderr)
    assert {"daemon", "daemon.config"} <= modules  # the import log is really there
    heavy = sorted(m for m in modules if m.split(".")[0] in ("torch", "numpy", "coremltools", "matplotlib"))
    assert heavy == []
