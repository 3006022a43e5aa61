"""The helpers every command shares: comma lists, durations, --since, exit codes, generated files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from daemon import clitools
from daemon.clitools import comma_list, parse_duration, parse_since, write_or_check


def test_parse_since() -> None:
    assert parse_since("24h", now=100_000.0) == 100_000.0 - 86400
    assert parse_since("7d", now=1e6) == 1e6 - 7 * 86400
    assert parse_since("90 min", now=1e4) == 1e4 - 5400
    assert parse_since("2026-01-02T03:04:05+00:00", now=2e9) == 1767323045.0
    local = parse_since("2026-01-02", now=2e9)
    assert time.localtime(local)[:6] == (2026, 1, 2, 0, 0, 0)
    for bad in ("yesterday", "0h", "-3h", "2999-01-01", ""):
        with pytest.raises(ValueError):
            parse_since(bad, now=2e9)


def test_parse_duration() -> None:
    assert parse_duration("30s") == 30 and parse_duration("90 min") == 5400 and parse_duration("2w") == 1209600
    assert parse_duration("1.5h") == 5400 and parse_duration(" 24H ") == 86400
    for bad in ("", "h", "5", "5 parsecs", "0m", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_comma_list() -> None:
    assert comma_list(" matmul, conv,,matmul ", "phase") == ["matmul", "conv"]
    assert comma_list(["cpu", " cuda"], "backend", ("cpu", "cuda")) == ["cpu", "cuda"]
    with pytest.raises(ValueError, match="no phase given"):
        comma_list(" , ", "phase")
    with pytest.raises(ValueError, match=r"unknown phase 'gemm' \(choose from matmul, conv\)"):
        comma_list("matmul,gemm", "phase", ("matmul", "conv"))
    with pytest.raises(ValueError, match="comma list"):
        comma_list([1, 2], "phase")  # type: ignore[list-item]


def test_exit_codes_are_the_sysexits_ones() -> None:
    assert (clitools.EX_USAGE, clitools.EX_TEMPFAIL, clitools.EX_CONFIG) == (2, 75, 78)
    assert clitools.EX_BROKEN_PIPE == 128 + 13 and clitools.EX_INTERRUPTED == 128 + 2


def test_device_indices() -> None:
    assert clitools.device_indices("all") is None
    assert clitools.device_indices(" 1, 0,01,,") == ("1", "0")
    assert clitools.device_indices([0, 2]) == ("0", "2")
    for bad in ("", "gpu0", "-1", [True], [], 3):
        with pytest.raises(ValueError):
            clitools.device_indices(bad)  # type: ignore[arg-type]


def test_write_or_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Generated files: --check names what is missing or differs and fails; writing makes the
    check pass."""
    files = {"a.json": "{}\n", "sub/b.plist": "<plist/>\n"}
    (tmp_path / "a.json").write_text("{ }\n", encoding="utf-8")
    assert write_or_check(files, tmp_path, check=True, regenerate="python gen.py") == clitools.EX_FAILURE
    assert capsys.readouterr().err == "out of date: a.json, sub/b.plist (run python gen.py)\n"
    assert (tmp_path / "a.json").read_text(encoding="utf-8") == "{ }\n"  # a check writes nothing
    assert not (tmp_path / "sub").exists()
    assert write_or_check(files, tmp_path, check=False, regenerate="python gen.py") == clitools.EX_OK
    assert (tmp_path / "sub/b.plist").read_text(encoding="utf-8") == "<plist/>\n"
    assert write_or_check(files, tmp_path, check=True, regenerate="python gen.py") == clitools.EX_OK
    assert capsys.readouterr().err == ""
