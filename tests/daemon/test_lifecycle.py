"""The real `soakd run` from start to stop: signals during start-up, one daemon per state
directory, the truth after kill -9, and the schedule after a restart (issue 19 items 4, 8, 9;
issue 10 item 3)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from cli_helpers import run_main
from daemon_process import Daemon, sample_value, write_config
from fault_helpers import rows, run_soakd, wait_until

from daemon.journal import Journal

pytestmark = pytest.mark.slow
SIGUSR1_BIT = 1 << (signal.SIGUSR1 - 1)


def _handlers_or_pid_file(daemon: Daemon) -> bool:
    """The daemon catches SIGUSR1 (its signal mask in /proc says so), or its pid file exists."""
    if (daemon.state_dir / "soakd.pid").exists():
        return True
    try:
        status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) & SIGUSR1_BIT)


def _first_instant(daemon: Daemon) -> None:
    deadline = time.monotonic() + 30
    while not _handlers_or_pid_file(daemon):
        assert time.monotonic() < deadline and daemon.process.poll() is None, daemon.output()
        time.sleep(0.005)


def test_signals_during_start_up_are_queued_not_fatal(tmp_path: Path) -> None:
    config = write_config(tmp_path / "soakd.toml", run_at_start=False)
    daemon = Daemon(tmp_path / "state", config)
    try:
        _first_instant(daemon)
        sent = 0
        while True:  # SIGUSR1 and SIGHUP all through start-up, until /metrics answers
            for signum in (signal.SIGUSR1, signal.SIGHUP):
                if daemon.process.poll() is not None:
                    raise AssertionError(f"exit {daemon.process.returncode} after {sent} signals\n{daemon.output()}")
                daemon.signal(signum)
                sent += 1
            try:
                daemon.scrape(timeout=0.5)
                break
            except OSError:
                time.sleep(0.05)
        assert sent >= 4
        daemon.wait_for("soakd_rotations_total", 1, timeout=90, result="completed")
        journal = tmp_path / "state" / "journal.sqlite3"
        assert rows(journal, "SELECT trigger FROM rotations ORDER BY id LIMIT 1") == [("signal",)]
        assert '"received_during_startup": true' in daemon.log.read_text(encoding="utf-8")  # the whole log
        assert daemon.process.poll() is None
    finally:
        daemon.stop()


@pytest.mark.parametrize("when", ["first instant", "pid file"])
def test_sigterm_during_start_up_exits_0_and_leaves_no_pid_file(tmp_path: Path, when: str) -> None:
    daemon = Daemon(tmp_path / "state", write_config(tmp_path / "soakd.toml"))
    if when == "first instant":
        _first_instant(daemon)
    else:
        wait_until(lambda: (daemon.state_dir / "soakd.pid").exists(), 30, "pid file", daemon.output)
    sent = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(15) == 0, daemon.output()
    assert time.monotonic() - sent < 10
    assert not (daemon.state_dir / "soakd.pid").exists()
    assert "Traceback" not in daemon.output()


def test_a_second_daemon_is_refused_even_without_the_pid_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "soakd.toml", run_at_start=False)
    first = Daemon(state, config)
    try:
        first.wait_ready()
        (state / "soakd.pid").unlink()
        (tmp_path / "link").symlink_to(state)  # another path to the same directory
        for state_dir in (state, tmp_path / "link"):
            second = run_soakd(["run", "--config", str(config), "--state-dir", str(state_dir),
                                "--listen", "127.0.0.1:0"])
            assert second.returncode == 75, second.stdout + second.stderr
            assert second.stderr.count("\n") == 1 and "another soakd is running" in second.stderr
        assert rows(state / "journal.sqlite3", "SELECT COUNT(*) FROM events WHERE kind='start'") == [(1,)]
        # the first one puts its pid file back, and `trigger` finds it either way
        wait_until(lambda: (state / "soakd.pid").exists(), 10, "pid file restored", first.output)
        assert (state / "soakd.pid").read_text().strip() == str(first.process.pid)
        (state / "soakd.pid").unlink()
        trigger = run_soakd(["trigger", "--config", str(config), "--state-dir", str(state)])
        assert trigger.returncode == 0 and str(first.process.pid) in trigger.stdout
        wait_until(lambda: '"signal": "SIGUSR1"' in first.output(), 10, "SIGUSR1 arrived", first.output)
        (state / "soakd.pid").write_text("999999\n")  # not the first one's: its exit leaves it alone
    finally:
        first.stop()
    assert first.process.returncode == 0
    assert (state / "soakd.pid").read_text() == "999999\n"


def test_after_kill_9_status_shows_no_running_slice_and_counts_the_interrupted_rotation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    config = write_config(tmp_path / "soakd.toml", phase_seconds=60)
    process = Daemon(state, config)
    process.wait_ready()
    wait_until(lambda: rows(state / "journal.sqlite3", "SELECT COUNT(*) FROM slices")[0][0] >= 1, 60,
               "a slice", process.output)
    process.process.kill()
    process.wait(10)
    restarted = Daemon(state, write_config(tmp_path / "again.toml", run_at_start=False))
    try:
        restarted.wait_ready()
        code, out, _ = run_main(["status", "--config", str(config), "--state-dir", str(state)], capsys)
        assert code == 0 and f"running (pid {restarted.process.pid})" in out
        assert "now:" not in out, out
        assert "rotation 1: ci (schedule)" in out and "interrupted" in out
        text = restarted.scrape()
        assert sample_value(text, "soakd_rotations_total", result="interrupted") == 1
        assert sample_value(text, "soakd_rotation_active") == 0
    finally:
        restarted.stop()


# --- the schedule after a restart (issue 10 item 3) --------------------------------------------


def _journal_with_a_rotation(state: Path, started_ago: float) -> float:
    """A journal whose only rotation started `started_ago` seconds ago; returns that time."""
    journal = Journal(state / "journal.sqlite3")
    started = time.time() - started_ago
    rotation = journal.start_rotation("ci", "schedule", "cpu", started_at=started)
    journal.end_rotation(rotation, "completed", ended_at=started + 5)
    journal.close()
    return started


def _status(config: Path, state: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    import json

    code, out, _ = run_main(["status", "--json", "--config", str(config), "--state-dir", str(state)], capsys)
    assert code == 0
    return dict(json.loads(out))


@pytest.mark.parametrize("ago, run_at_start, rotates_now", [
    (7200, True, True),  # more than one interval ago: now
    (600, True, False),  # ten minutes ago: at last start + 60 min
    (None, False, False),  # run_at_start = false waits for the schedule
])
def test_the_first_rotation_after_a_restart_follows_the_last_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], ago: float | None, run_at_start: bool,
        rotates_now: bool) -> None:
    state = tmp_path / "state"
    state.mkdir()
    last = _journal_with_a_rotation(state, ago) if ago is not None else None
    config = write_config(tmp_path / "soakd.toml", run_at_start=run_at_start)
    daemon = Daemon(state, config, port=0)  # the daemon picks a free port; status must say which
    try:
        wait_until(lambda: '"event": "schedule"' in daemon.output(), 60, "schedule log line", daemon.output)
        started = time.time()
        document = _status(config, state, capsys)
        assert document["running"] and document["listen"] != "127.0.0.1:0"
        host, _, port = str(document["listen"]).rpartition(":")
        assert host == "127.0.0.1" and int(port) > 0
        daemon.port = int(port)
        daemon.wait_ready()
        if rotates_now:
            daemon.wait_for("soakd_rotations_total", 1, timeout=60, result="completed")
            ((trigger, begun),) = rows(state / "journal.sqlite3",
                                       "SELECT trigger, started_at FROM rotations WHERE id > 1")
            assert trigger == "schedule" and abs(begun - started) < 15
            expected = begun + 3600  # and the next one an interval after it
            upcoming = float(_status(config, state, capsys)["next_rotation"])  # type: ignore[arg-type]
        else:
            expected = last + 3600 if last is not None else started + 3600
            upcoming = float(document["next_rotation"])  # type: ignore[arg-type]
            time.sleep(2)
            assert daemon.value("soakd_rotation_active") == 0
            assert rows(state / "journal.sqlite3", "SELECT COUNT(*) FROM rotations")[0][0] == (1 if last else 0)
        assert abs(upcoming - expected) < 15, (upcoming, expected)
        assert daemon.value("soakd_next_rotation_timestamp_seconds") == pytest.approx(upcoming, abs=1)
        assert "next rotation:" in run_main(["status", "--config", str(config), "--state-dir", str(state)],
                                            capsys)[1]
    finally:
        daemon.stop()
