"""Shared test helpers for daemon tests: where the recorded powermetrics fixtures live.

The fixtures are real powermetrics outputs kept outside the repository, at
`<repo>/../shared/fixtures/powermetrics` (see SOURCES.md there). SOAKD_FIXTURES overrides
the location: it may name either that `powermetrics` directory or its parent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

def powermetrics_fixtures_dir() -> Path:
    override = os.environ.get("SOAKD_FIXTURES")
    if override:
        base = Path(override)
        return base / "powermetrics" if (base / "powermetrics").is_dir() else base
    return (REPO / ".." / "shared" / "fixtures" / "powermetrics").resolve()


def powermetrics_output_files() -> list[Path]:
    """Every recorded powermetrics output (the `-h` help text is not output, so it is left out)."""
    directory = powermetrics_fixtures_dir()
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir()
                  if p.suffix in (".plist", ".txt") and "_helptext_" not in p.name)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    directory = powermetrics_fixtures_dir()
    if not directory.is_dir():
        pytest.skip(f"powermetrics fixtures not found at {directory} (set SOAKD_FIXTURES)")
    return directory


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # `powermetrics_file`: one test per recorded output file.
    if "powermetrics_file" in metafunc.fixturenames:
        files = powermetrics_output_files()
        metafunc.parametrize("powermetrics_file", files, ids=[p.name for p in files])
