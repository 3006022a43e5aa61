"""The real `soakd run` under faults: a journal it cannot write, bad journals and state
directories at start, a stop while the journal is locked (issue 19, items 1, 3, 5)."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import run_main
from daemon_process import Daemon, free_port, write_config
from fault_helpers import locked_journal, read_only_dir, rows, run_soakd, small_filesystem, wait_until
from test_config import REPORTED

from daemon.journal import SCHEMA_VERSION

pytestmark = pytest.mark.slow
PHASES = ["matmul", "conv", "attention"]


def _drained(daemon: Daemon) -> Callable[[], bool]:
    return lambda: daemon.value("soakd_journal_pending_rows") == 0 and daemon.value("soakd_journal_errors_total") > 0


def _check_rotation_written(journal: Path, events: list[str]) -> None:
    """Rotation 1 closed out with its slices, in order; `events` journalled in this order."""
    assert rows(journal, "SELECT id, result FROM rotations") == [(1, "completed")]
    written = rows(journal, "SELECT id, phase, started_at, steps FROM slices WHERE rotation_id=1 ORDER BY id")
    assert [phase for _, phase, _, _ in written] == PHASES
    assert [start for _, _, start, _ in written] == sorted(start for _, _, start, _ in written)
    assert all(steps > 0 for *_, steps in written)
    kinds = [kind for (kind,) in rows(journal, "SELECT kind FROM events ORDER BY id")]
    positions = [kinds.index(kind) for kind in events]
    assert positions == sorted(positions), kinds


def test_a_locked_journal_keeps_rows_in_memory_and_writes_them_in_order_later(tmp_path: Path) -> None:
    config = write_config(tmp_path / "soakd.toml", run_at_start=False)
    daemon = Daemon(tmp_path / "state", config)
    journal = tmp_path / "state" / "journal.sqlite3"
    try:
        daemon.wait_ready()
        with locked_journal(journal) as lock:
            daemon.signal(signal.SIGUSR1)  # its event and the whole rotation meet the lock
            daemon.wait_for("soakd_rotations_total", 1, timeout=90, result="completed")
            daemon.signal(signal.SIGHUP)
            wait_until(lambda: "config_reloaded" in daemon.output(), 30, "reload", daemon.output)
            assert daemon.process.poll() is None
            assert daemon.value("soakd_rotation_active") == 0
            assert daemon.value("soakd_journal_errors_total") >= 1
            assert daemon.value("soakd_journal_pending_rows") >= 5  # rotation, 3 slices, events
            assert lock.execute("SELECT COUNT(*) FROM slices").fetchone()[0] == 0
            health = daemon.healthz()
            assert health["status"] == "degraded" and "locked" in health["journal"]["last_error"]
        wait_until(_drained(daemon), 30, "pending journal rows written", daemon.output)
        _check_rotation_written(journal, ["start", "signal", "config_reloaded"])
        assert "journal_recovered" in daemon.output()
    finally:
        daemon.stop()


def test_a_full_disk_mid_run_loses_nothing_once_there_is_space_again(tmp_path: Path) -> None:
    config = write_config(tmp_path / "soakd.toml", run_at_start=False)
    with small_filesystem(tmp_path / "fs") as fs:
        daemon = Daemon(fs.path / "state", config, env=fs.env, log_dir=tmp_path)  # log off the small fs
        journal = fs.path / "state" / "journal.sqlite3"
        try:
            daemon.wait_ready()
            fs.fill()
            daemon.signal(signal.SIGUSR1)
            daemon.wait_for("soakd_rotations_total", 1, timeout=90, result="completed")
            assert daemon.process.poll() is None
            assert daemon.value("soakd_rotation_active") == 0
            assert daemon.value("soakd_journal_errors_total") >= 1
            assert daemon.value("soakd_journal_pending_rows") >= 4
            assert "database or disk is full" in daemon.output()
            fs.free()
            wait_until(_drained(daemon), 30, "pending journal rows written", daemon.output)
            _check_rotation_written(journal, ["start", "signal"])
        finally:
            daemon.stop()


def test_sigterm_with_the_journal_locked_exits_0_quickly_and_the_next_run_writes_the_rest(tmp_path: Path) -> None:
    config = write_config(tmp_path / "soakd.toml", phase_seconds=30)
    state = tmp_path / "state"
    journal = state / "journal.sqlite3"
    daemon = Daemon(state, config)
    daemon.wait_ready()
    wait_until(lambda: rows(journal, "SELECT COUNT(*) FROM slices")[0][0] >= 1, 60, "a slice", daemon.output)
    with locked_journal(journal):
        time.sleep(2.5)  # slices end while the journal is locked
        daemon.assert_stops_cleanly(within=10)
    assert "journal_rows_spilled" in daemon.output()
    before = rows(journal, "SELECT COUNT(*) FROM slices")[0][0]
    again = Daemon(state, write_config(tmp_path / "again.toml", run_at_start=False))
    try:
        again.wait_ready()
        assert rows(journal, "SELECT result FROM rotations WHERE id=1") == [("stopped",)]
        assert rows(journal, "SELECT COUNT(*) FROM slices")[0][0] > before
        kinds = [k for (k,) in rows(journal, "SELECT kind FROM events ORDER BY id")]
        last_start = len(kinds) - 1 - kinds[::-1].index("start")
        assert kinds.count("stop") == 1 and kinds.index("stop") < last_start  # the spill, then this run
        assert not (state / "journal.sqlite3.pending").exists()
    finally:
        again.stop()


# --- start-up ---------------------------------------------------------------------------------


def _foreign(journal: Path) -> None:
    with sqlite3.connect(journal) as db:
        db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO users(name) VALUES ('ada')")


def _newer(journal: Path) -> None:
    with sqlite3.connect(journal) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '99')")


@pytest.mark.parametrize("make, message", [
    (_foreign, "is not a soakd journal (tables: users)"),
    (_newer, f"has schema version 99; this soakd reads up to {SCHEMA_VERSION}: upgrade soakd"),
], ids=["foreign-schema", "newer-schema"])
def test_a_journal_that_is_not_ours_is_refused_in_one_line_and_left_alone(
        tmp_path: Path, make: Callable[[Path], None], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    make(state / "journal.sqlite3")
    digest = hashlib.sha256((state / "journal.sqlite3").read_bytes()).hexdigest()
    run = run_soakd(["run", "--config", str(write_config(tmp_path / "c.toml")), "--state-dir", str(state),
                     "--listen", f"127.0.0.1:{free_port()}"])
    assert run.returncode == 78, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and message in run.stderr and "Traceback" not in run.stderr
    assert hashlib.sha256((state / "journal.sqlite3").read_bytes()).hexdigest() == digest
    for command in (["status"], ["history"], ["report", "--out", str(tmp_path / "report")]):
        code, out, err = run_main([*command, "--state-dir", str(state)], capsys)
        assert code == 1 and out == "" and err.count("\n") == 1 and message in err


def test_a_corrupt_journal_is_moved_aside_and_a_new_one_started(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    garbage = bytes(range(256)) * 64
    (state / "journal.sqlite3").write_bytes(garbage)
    code, out, err = run_main(["status", "--state-dir", str(state)], capsys)
    assert code == 1 and err.count("\n") == 1 and "is corrupt" in err and "moves it aside" in err
    daemon = Daemon(state, write_config(tmp_path / "c.toml", run_at_start=False))
    try:
        daemon.wait_ready()
        (moved,) = state.glob("journal.sqlite3.corrupt-*")
        assert moved.read_bytes() == garbage
        assert str(moved) in daemon.output() and "journal_corrupt_moved_aside" in daemon.output()
        kinds = [k for (k,) in rows(state / "journal.sqlite3", "SELECT kind FROM events ORDER BY id")]
        assert kinds[:2] == ["start", "journal_replaced"]
        code, out, err = run_main(["status", "--state-dir", str(state)], capsys)
        assert code == 0 and "running" in out
    finally:
        daemon.stop()


def test_a_zero_length_journal_is_a_new_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal.sqlite3").touch()
    code, out, _ = run_main(["status", "--state-dir", str(state)], capsys)
    assert code == 0 and "journal: none yet" in out
    daemon = Daemon(state, write_config(tmp_path / "c.toml", run_at_start=False))
    try:
        daemon.wait_ready()
        assert rows(state / "journal.sqlite3", "SELECT kind FROM events") == [("start",)]
    finally:
        daemon.stop()


def _refused(tmp_path: Path, state: Path, env: dict[str, str] | None = None,
             listen: str | None = None) -> str:
    """`soakd run` on `state` ends with exit 78 and one line; returns that line."""
    run = run_soakd(["run", "--config", str(write_config(tmp_path / "c.toml")), "--state-dir", str(state),
                     "--listen", listen or f"127.0.0.1:{free_port()}"], env=env)
    assert run.returncode == 78, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, run.stderr
    return run.stderr


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in _refused(tmp_path, tmp_path / "file")
    assert "is not a directory" in _refused(tmp_path, tmp_path / "file" / "state")


def test_a_read_only_state_dir_is_refused(tmp_path: Path) -> None:
    with read_only_dir(tmp_path / "ro") as directory:
        line = _refused(tmp_path, directory)
        assert "Read-only file system" in line or "Permission denied" in line or "readonly" in line


def test_a_full_disk_at_start_is_refused(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs") as fs:
        fs.fill(leave_bytes=4096)  # room for the pid file, not for the journal
        line = _refused(tmp_path, fs.path / "state", env=fs.env)
        assert "full" in line or "No space left" in line


def test_a_listen_host_that_does_not_resolve_is_refused(tmp_path: Path) -> None:
    line = _refused(tmp_path, tmp_path / "state", listen="no-such-host.invalid:10466")
    assert "does not resolve" in line and "no-such-host.invalid" in line


# --- numbers in range (item 2) ------------------------------------------------------------------


@pytest.mark.parametrize("text, key", REPORTED, ids=[key for _, key in REPORTED])
def test_a_number_out_of_range_stops_soakd_run_in_one_line(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    run = run_soakd(["run", "--config", str(config), "--state-dir", str(tmp_path / "state")])
    assert run.returncode == 78, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and key in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was touched


def _merged(config: str, snippet: str) -> str:
    """`config` with the `[section]` and `key = value` line of `snippet` put into it (in place of
    that key's line, if the section has one)."""
    header, line = snippet.strip().split("\n", 1)
    name = line.split("=")[0].strip()
    out, section, placed = [], "", False
    for current in config.splitlines():
        if current.startswith("["):
            section = current.strip()
        if section == header and current.split("=")[0].strip() == name:
            continue
        out.append(current)
        if current.strip() == header:
            out.append(line)
            placed = True
    return "\n".join(out) + ("\n" if placed else f"\n{snippet}")


def test_a_reload_with_a_number_out_of_range_keeps_the_old_config_and_schedule(tmp_path: Path) -> None:
    config = write_config(tmp_path / "soakd.toml", run_at_start=False)
    good = config.read_text(encoding="utf-8")
    daemon = Daemon(tmp_path / "state", config)

    def rejected() -> list[str]:
        return [line for line in daemon.log.read_text().splitlines() if '"config_rejected"' in line]

    try:
        daemon.wait_ready()
        upcoming = daemon.value("soakd_next_rotation_timestamp_seconds")
        for n, (text, key) in enumerate(REPORTED, start=1):
            config.write_text(_merged(good, text), encoding="utf-8")
            daemon.signal(signal.SIGHUP)
            wait_until(lambda n=n: len(rejected()) >= n, 30, f"reload {n} refused", daemon.output)  # type: ignore[misc]
            assert key in rejected()[-1]
        assert daemon.process.poll() is None
        assert daemon.value("soakd_next_rotation_timestamp_seconds") == upcoming
        config.write_text(_merged(good, "[schedule]\ninterval_minutes = 30\n"), encoding="utf-8")
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: abs(daemon.value("soakd_next_rotation_timestamp_seconds") - (upcoming - 1800)) < 3,
                   30, "the new interval", daemon.output)
    finally:
        daemon.stop()
