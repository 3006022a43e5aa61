"""Faults for tests against the real `soakd run`: a locked journal, a full or read-only file
system, and a way to run `soakd` and read its journal.

A full disk is a real small tmpfs where this process may mount one (root with the mount
capability, as on this project's machines); elsewhere it is the journal's test hook
(SOAKD_TEST_DISK_FULL_FILE, daemon/journal.py), which makes every journal write fail with
SQLite's own "database or disk is full" while the test says the disk is full. A read-only
state directory is a read-only tmpfs as root, or a mode-555 directory for anyone else.
SOAKD_TESTS_NO_MOUNT=1 makes these helpers take the stand-ins even where they could mount.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_process import REPO


def _mount(*args: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None or os.environ.get("SOAKD_TESTS_NO_MOUNT") == "1":
        return False
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class SmallFilesystem:
    """A directory whose file system the test fills (`fill`) and frees (`free`)."""

    def __init__(self, root: Path, size: str = "8m") -> None:
        self.path = root
        root.mkdir(parents=True, exist_ok=True)
        self.real = _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root))
        self._flag = root.parent / f"{root.name}.full"  # the stand-in's switch, outside the fs
        self._filler = root / "filler"
        # The stand-in: the daemon's journal writes fail while the flag file exists.
        self.env = {} if self.real else {"SOAKD_TEST_DISK_FULL_FILE": str(self._flag)}

    def fill(self, leave_bytes: int = 0) -> None:
        """Use every free byte but `leave_bytes` (the stand-in: every journal write fails)."""
        if not self.real:
            self._flag.touch()
            return
        chunk = b"\0" * 65536
        with open(self._filler, "ab") as handle:
            try:
                while True:
                    handle.write(chunk)
                    handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        if leave_bytes:
            size = self._filler.stat().st_size
            os.truncate(self._filler, max(0, size - leave_bytes))

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)
        self._flag.unlink(missing_ok=True)

    def close(self) -> None:
        self.free()
        if self.real:
            _umount(self.path)


@contextlib.contextmanager
def small_filesystem(root: Path) -> Iterator[SmallFilesystem]:
    fs = SmallFilesystem(root)
    try:
        yield fs
    finally:
        fs.close()


@contextlib.contextmanager
def read_only_dir(root: Path) -> Iterator[Path]:
    """An existing directory this process cannot write in."""
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        root.chmod(0o555)
        try:
            yield root
        finally:
            root.chmod(0o755)
        return
    if not _mount("-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(root)):
        pytest.skip("running as root without the right to mount a read-only file system")
    try:
        yield root
    finally:
        _umount(root)


@contextlib.contextmanager
def locked_journal(path: Path) -> Iterator[sqlite3.Connection]:
    """A second SQLite connection holding the journal's write lock until the block ends."""
    db = sqlite3.connect(path, isolation_level=None, timeout=10)
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    finally:
        db.execute("ROLLBACK")
        db.close()


def rows(journal: Path, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(journal, timeout=10)) as db:
        return list(db.execute(query, args))


def wait_until(check: Callable[[], Any], timeout: float, what: str, output: Callable[[], str] = str) -> Any:
    """Poll `check` until it returns something true; AssertionError (with `output()`) after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s\n{output()}")


def run_soakd(args: list[str], env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m daemon.cli ARGS` to the end, output captured."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("CI", None)
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)
