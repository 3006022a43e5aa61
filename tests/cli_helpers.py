"""Run `soakd` sub-commands in this process, for tests."""

from __future__ import annotations

import pytest

from daemon.cli import main


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main() in this process; argparse's own errors (SystemExit) count as a return code."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code) if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
