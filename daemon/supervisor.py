"""The launchd supervisor: the job's real ProgramArguments, in front of `soakd run`.

    python -m daemon.supervisor --stdout LOG --stderr ERR --pid-file PID --hint TEXT -- COMMAND...

It runs COMMAND (`python -m daemon.cli run ...`), forwards SIGTERM, SIGINT, SIGHUP, SIGUSR1 and
SIGUSR2 to it, turns exit 78 (EX_CONFIG) into 0 so that KeepAlive {SuccessfulExit: false} does
not restart-loop on a permanent error, and reopens the log files after newsyslog moves them
aside (on SIGWINCH, or when the path no longer names the open file). launchd/README.md says
why launchd needs it and systemd does not.

It imports only the standard library and daemon.clitools (itself standard library only), so
it starts in milliseconds and stays small: no torch, no config, no daemon code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Protocol

from daemon.clitools import EX_CONFIG

# newsyslog signals the supervisor with this after moving a log file aside. SIGWINCH is 28 on
# macOS and Linux and ignored by default, so a stale pid file cannot hurt another process.
REOPEN_SIGNAL = signal.SIGWINCH
FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
)
EX_CANNOT_EXECUTE = 127  # what a shell reports when the command cannot be started


def _write_pid_file(path: Path) -> None:
    """Our pid into `path`, atomically (newsyslog may read it at any moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(f"{os.getpid()}\n", encoding="utf-8")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Writable(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


def _log_line(stream: _Writable, level: str, event: str, **fields: object) -> None:
    """JSON lines, like the daemon's own structlog output in the same file."""
    record = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
              "level": level, "logger": "soakd.supervisor", "event": event, **fields}
    stream.write(json.dumps(record) + "\n")
    stream.flush()


class _LogTarget:
    """One of our own stdout/stderr descriptors, bound to a path it is reopened on after a
    rotation (on REOPEN_SIGNAL, or when the path no longer names the open file)."""

    CHECK_EVERY_S = 5.0

    def __init__(self, fd: int, path: Path | None) -> None:
        self.fd = fd
        self.path = path
        self.reopen_requested = threading.Event()
        self.lock = threading.Lock()
        self.checked = time.monotonic()

    def write(self, data: bytes) -> None:
        with self.lock:
            self._maybe_reopen()
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self.fd, view)
                except OSError:
                    return  # a log that cannot be written must not take the service down
                view = view[written:]

    def _maybe_reopen(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not self.reopen_requested.is_set() and now - self.checked < self.CHECK_EVERY_S:
            return
        self.checked = now
        self.reopen_requested.clear()
        try:
            current = os.fstat(self.fd)
            on_disk = os.stat(self.path)
            if (current.st_dev, current.st_ino) == (on_disk.st_dev, on_disk.st_ino):
                return
        except OSError:
            pass  # moved away and not recreated yet, or fd closed: open the path afresh
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError:
            return
        os.dup2(new, self.fd)
        os.close(new)


def _pump(source: int, target: _LogTarget) -> None:
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            break
        if not chunk:
            break
        target.write(chunk)
    os.close(source)


def supervise(command: Sequence[str], *, stdout_path: Path | None = None,
              stderr_path: Path | None = None, pid_file: Path | None = None,
              hint: str | None = None) -> int:
    """Run `command`; forward signals; map its exit for launchd (see the module docstring).

    Exit status: the child's, except 78 → 0 (permanent config error: do not restart) and a
    death by SIGTERM/SIGINT that we forwarded → 0 (a requested stop).
    """
    out = _LogTarget(1, stdout_path)
    err = _LogTarget(2, stderr_path)
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []
    stop_requested = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        if signum in (signal.SIGTERM, signal.SIGINT):
            stop_requested = True
        if child is None:
            pending.append(signum)
        elif child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    def reopen(signum: int, frame: FrameType | None) -> None:
        out.reopen_requested.set()
        err.reopen_requested.set()

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    signal.signal(REOPEN_SIGNAL, reopen)
    err_stream = _FdTextStream(err)

    if pid_file is not None:
        _write_pid_file(pid_file)
    pumps: list[threading.Thread] = []
    try:
        try:
            # Pipes only when there are paths to reopen; else the child shares our descriptors.
            child = subprocess.Popen(
                list(command),
                stdout=subprocess.PIPE if stdout_path else None,
                stderr=subprocess.PIPE if stderr_path else None,
            )
        except OSError as exc:
            _log_line(err_stream, "error", "cannot start soakd run", command=list(command),
                      error=str(exc))
            return EX_CANNOT_EXECUTE
        for pipe, target in ((child.stdout, out), (child.stderr, err)):
            if pipe is not None:
                thread = threading.Thread(target=_pump, args=(os.dup(pipe.fileno()), target),
                                          daemon=True)
                pipe.close()
                thread.start()
                pumps.append(thread)
        for queued in pending:
            forward(queued, None)
        returncode = child.wait()
        # Drain what it wrote last (its one-line config error). A worker that outlives it may
        # hold the pipe open: do not wait for that forever.
        for thread in pumps:
            thread.join(timeout=2.0)
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                if pid_file.read_text().strip() == str(os.getpid()):
                    pid_file.unlink()

    if returncode == EX_CONFIG:
        _log_line(err_stream, "error",
                  "soakd run exited 78 (EX_CONFIG): the configuration is wrong, see the error "
                  "above; not restarting until it is fixed" + (f": then {hint}" if hint else ""),
                  exit_code=returncode)
        return 0
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
        if stop_requested and -returncode in (signal.SIGTERM, signal.SIGINT):
            return 0
        _log_line(err_stream, "error", f"soakd run was killed by {signame}; launchd restarts it",
                  signal=signame)
        return 128 - returncode
    if returncode != 0:
        _log_line(err_stream, "error", f"soakd run exited {returncode}; launchd restarts it",
                  exit_code=returncode)
    return returncode


class _FdTextStream:
    """A minimal text stream over a _LogTarget, so the supervisor's own lines also follow a
    rotation."""

    def __init__(self, target: _LogTarget) -> None:
        self.target = target

    def write(self, text: str) -> int:
        self.target.write(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m daemon.supervisor`: parse the options above and `supervise`; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m daemon.supervisor",
        description="launchd supervisor for `soakd run` (see launchd/README.md)")
    parser.add_argument("--stdout", type=Path, help="StandardOutPath, reopened after rotation")
    parser.add_argument("--stderr", type=Path, help="StandardErrorPath, reopened after rotation")
    parser.add_argument("--pid-file", type=Path, help="our pid, for newsyslog's signal")
    parser.add_argument("--hint", help="how to restart after fixing the config")
    parser.add_argument("argv", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        parser.error("no command given after --")
    return supervise(command, stdout_path=args.stdout, stderr_path=args.stderr,
                     pid_file=args.pid_file, hint=args.hint)


if __name__ == "__main__":
    sys.exit(main())
