"""Build powercap sysfs trees for the RAPL tests, from the field-report format or by hand.

Field-report format (tests/fixtures/field-reports/*.sysfs.txt): one file per line,
`<path> <snapshot1> [<snapshot2>] [mode]`, `#` comments. A value missing from snapshot 2 stays
as in snapshot 1; `mode` (e.g. 0400) is the file's permission bits on the reporting machine.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path

_MODE = re.compile(r"0[0-7]{3}")


@dataclass(frozen=True)
class SysfsFile:
    path: str
    values: tuple[str, str]
    mode: int


def parse_sysfs_report(text: str) -> list[SysfsFile]:
    files = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        path, *rest = line.split()
        mode = 0o444
        if len(rest) >= 2 and _MODE.fullmatch(rest[-1]):
            mode = int(rest.pop(), 8)
        first = rest[0]
        second = rest[1] if len(rest) > 1 else first
        files.append(SysfsFile(path, (first, second), mode))
    return files


def write_snapshot(root: Path, files: list[SysfsFile], snapshot: int) -> None:
    """Write snapshot 0 or 1 of every file under `root` with the recorded modes."""
    for item in files:
        target = root / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.chmod(0o644)
        target.write_text(item.values[snapshot] + "\n")
        target.chmod(item.mode)


def unprivileged_reader(path: Path) -> str:
    """Read `path` as a user who is neither root nor the owner would: only world-readable files.

    The tests may run as root (for whom modes do not apply) or as the owner of the files, so
    the other-user view of the recorded modes is emulated from the permission bits.
    """
    if not path.stat().st_mode & stat.S_IROTH:
        raise PermissionError(13, "Permission denied", str(path))
    return path.read_text()
