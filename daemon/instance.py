"""One daemon per state directory: an exclusive lock on the directory itself, and a pid file.

The lock is a `flock` on the state directory (not on a file in it), so removing the pid file
or the journal does not let a second daemon in: it is refused (`AlreadyRunning`, exit 75) for
as long as the first one runs, however it is started (another path to the same directory, a
symlink, `--state-dir` or the environment). The lock goes with the process, so `kill -9`
leaves nothing stale. The pid file is only a pointer for `soakd trigger` and `soakd status`;
a daemon removes it at exit only while it still names that daemon.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from daemon.clitools import EX_CONFIG, EX_TEMPFAIL

PID_FILE = "soakd.pid"


class StartupError(Exception):
    """`soakd run` cannot start: a one-line message and the exit code to leave with."""

    def __init__(self, message: str, code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.code = code


class AlreadyRunning(StartupError):
    """Another soakd holds the state directory (exit 75, EX_TEMPFAIL)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EX_TEMPFAIL)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class Running:
    """A daemon holding a state directory's lock; `pid` None when its pid file is gone."""

    pid: int | None


def running(state_dir: Path) -> Running | None:
    """The daemon that holds `state_dir`'s lock, or None when none does."""
    try:
        fd = _open_dir(state_dir)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return None
        return Running(_read_pid(state_dir / PID_FILE))
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class InstanceLock:
    """The state directory's lock and pid file, held from `acquire()` to `release()`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.pid_path = self.state_dir / PID_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write the pid file. Raises AlreadyRunning (another daemon holds the
        directory) or StartupError (not a directory, cannot be created or written)."""
        directory = self.state_dir
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = _open_dir(directory)
        except (FileExistsError, NotADirectoryError):
            raise StartupError(f"state directory {directory} is not a directory") from None
        except OSError as exc:
            raise StartupError(f"cannot use state directory {directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                pid = _read_pid(self.pid_path)
                raise AlreadyRunning(f"another soakd is running (pid {pid if pid else '?'}, "
                                     f"state directory {directory})") from None
            raise StartupError(f"cannot lock state directory {directory}: {exc.strerror or exc}") from None
        self._fd = fd
        try:
            self._write_pid()
        except OSError as exc:
            self.release()
            raise StartupError(f"cannot write {self.pid_path}: {exc.strerror or exc}") from None

    def _write_pid(self) -> None:
        tmp = self.pid_path.with_name(f".{PID_FILE}.{os.getpid()}")
        tmp.write_text(f"{os.getpid()}\n", encoding="utf-8")
        os.replace(tmp, self.pid_path)

    def restore_pid_file(self) -> bool:
        """Write the pid file again if someone removed it (the lock never depended on it);
        True if it was rewritten. Never raises."""
        if self._fd is None or _read_pid(self.pid_path) == os.getpid():
            return False
        try:
            self._write_pid()
        except OSError:
            return False
        return True

    def release(self) -> None:
        """Unlock the directory and remove the pid file if it still names this process."""
        if self._fd is None:
            return
        if _read_pid(self.pid_path) == os.getpid():
            self.pid_path.unlink(missing_ok=True)
        os.close(self._fd)  # closing the descriptor releases the flock
        self._fd = None
