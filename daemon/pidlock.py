"""The pid file that keeps one soakd per state directory, and its reader for the CLI.

Standard library only: `soakd status` and `soakd trigger` read it without importing the
service (and through it torch).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import TextIO


class AlreadyRunning(Exception):
    """Another soakd holds the pid lock of this state directory (exit 75, EX_TEMPFAIL)."""


class PidLock:
    """A pid file held under an exclusive flock: a second instance is refused, a stale file is not."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid; raises AlreadyRunning when another process holds
        it, OSError when the file cannot be opened or locked for another reason."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise AlreadyRunning(f"another soakd is running (pid {pid}, pid file {self.path})") from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        """Remove the pid file and drop the lock (a no-op when not held)."""
        if self._handle is not None:
            self.path.unlink(missing_ok=True)
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def running_pid(path: Path) -> int | None:
    """The pid of the soakd holding `path`'s lock, or None when no instance holds it."""
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = handle.read().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
