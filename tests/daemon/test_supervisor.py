"""The launchd supervisor (daemon/supervisor.py) with real processes, started exactly as the
rendered plist starts it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from install_helpers import DAEMON_STOP_BUDGET_S, PYTHON, split_supervisor

from daemon import supervisor
from daemon.install import render
from daemon.install import spec as install_spec

FAKE_DAEMON = r"""
import os, signal, sys, time
def say(text):
    print(text, flush=True)
signal.signal(signal.SIGUSR1, lambda s, f: say("usr1"))
signal.signal(signal.SIGHUP, lambda s, f: say("hup"))
def stop(s, f):
    say("stopping")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
say("ready %d" % os.getpid())
while True:
    time.sleep(0.05)
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def start_supervisor(tmp_path: Path, child: list[str]) -> tuple[subprocess.Popen[bytes], Path,
                                                                  Path, Path]:
    """The supervisor exactly as the rendered plist starts it, with a fake `soakd run`."""
    logs = tmp_path / "logs"
    spec = install_spec.ServiceSpec(manager="launchd", system=False, python=Path(PYTHON),
                          state_dir=tmp_path, config=None, log_dir=logs, user="alice",
                          group="staff", uid=501)
    argv, _ = split_supervisor(render.supervisor_command(spec))
    logs.mkdir()
    out, err = logs / "soakd.log", logs / "soakd.err.log"
    # launchd opens StandardOutPath/StandardErrorPath with O_APPEND before exec.
    with open(out, "ab") as stdout, open(err, "ab") as stderr:
        process = subprocess.Popen([*argv, "--", *child], stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL,
                                   cwd=Path(supervisor.__file__).resolve().parents[1])
    return process, out, err, logs / "supervisor.pid"


@pytest.mark.timeout(60)
def test_supervisor_turns_exit_78_into_0(tmp_path: Path) -> None:
    child = [PYTHON, "-c", "import sys; print('config: bad key', file=sys.stderr); sys.exit(78)"]
    process, _, err, pid_file = start_supervisor(tmp_path, child)
    assert process.wait(timeout=30) == 0  # launchd: SuccessfulExit, so no restart loop
    lines = read(err).splitlines()
    assert lines[0] == "config: bad key"  # the daemon's own line comes first
    assert '"exit_code": 78' in lines[1] and "not restarting" in lines[1]
    assert "launchctl kickstart -k gui/501/com.soakd.agent" in lines[1]
    assert not pid_file.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("code", "expected"), [(0, 0), (1, 1), (3, 3)])
def test_supervisor_passes_other_exits_through(tmp_path: Path, code: int, expected: int) -> None:
    process, *_ = start_supervisor(tmp_path, [PYTHON, "-c", f"raise SystemExit({code})"])
    assert process.wait(timeout=30) == expected


@pytest.mark.timeout(60)
def test_supervisor_forwards_signals_and_reopens_rotated_logs(tmp_path: Path) -> None:
    process, out, err, pid_file = start_supervisor(tmp_path, [PYTHON, "-c", FAKE_DAEMON])
    try:
        wait_for(lambda: "ready" in read(out))
        assert pid_file.read_text().strip() == str(process.pid)  # for newsyslog's signal
        # launchctl kill SIGUSR1 / SIGHUP reach the job's main process: the supervisor.
        process.send_signal(signal.SIGUSR1)
        wait_for(lambda: "usr1" in read(out))

        # What newsyslog does: move the file aside, then signal the pid file's process.
        out.rename(out.with_name("soakd.log.0"))
        open(out, "ab").close()  # newsyslog creates the new, empty file
        process.send_signal(supervisor.REOPEN_SIGNAL)
        time.sleep(0.2)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "hup" in read(out))
        assert "hup" not in read(out.with_name("soakd.log.0"))

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # launchctl bootout / kill SIGTERM
        assert process.wait(timeout=install_spec.EXIT_TIMEOUT_S) == 0
        assert time.monotonic() - started < DAEMON_STOP_BUDGET_S
        assert "stopping" in read(out)
        assert read(err) == ""
        assert not pid_file.exists()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.timeout(60)
def test_supervisor_reopens_by_itself_when_the_log_was_moved(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    # No signal at all (e.g. a rotation by hand): the inode check catches it.
    target = supervisor._LogTarget(os.open(tmp_path / "a.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                           tmp_path / "a.log")
    target.write(b"one\n")
    (tmp_path / "a.log").rename(tmp_path / "a.log.0")
    monkeypatch.setattr(supervisor._LogTarget, "CHECK_EVERY_S", 0.0)
    target.write(b"two\n")
    os.close(target.fd)
    assert (tmp_path / "a.log.0").read_text() == "one\n"
    assert (tmp_path / "a.log").read_text() == "two\n"


@pytest.mark.timeout(60)
def test_supervisor_reports_a_killed_daemon_as_a_failure(tmp_path: Path) -> None:
    process, out, err, _ = start_supervisor(tmp_path, [PYTHON, "-c", FAKE_DAEMON])
    try:
        wait_for(lambda: "ready" in read(out))
        child_pid = int(read(out).split()[1])
        os.kill(child_pid, signal.SIGKILL)  # e.g. jetsam: launchd must restart it
        assert process.wait(timeout=30) == 128 + signal.SIGKILL
        assert "killed by SIGKILL" in read(err)
    finally:
        if process.poll() is None:
            process.kill()


def test_supervisor_cannot_start_the_command(tmp_path: Path) -> None:
    process, _, err, _ = start_supervisor(tmp_path, [str(tmp_path / "no-such-python")])
    assert process.wait(timeout=30) == 127
    assert "cannot start soakd run" in read(err)
