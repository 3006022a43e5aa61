"""Shared test helpers for daemon tests: where the recorded fixtures live.

Every recorded input lives in the repository under `tests/fixtures/` (provenance in
`tests/fixtures/PROVENANCE.md`), so a fresh clone runs every test with nothing beside it.
A missing fixture is a broken checkout: tests fail on it, they never skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_paths import FIELD_REPORTS, POWERMETRICS


def powermetrics_output_files() -> list[Path]:
    """Every recorded powermetrics output (the `-h` help text is not output, so it is left out)."""
    return sorted(p for p in POWERMETRICS.iterdir()
                  if p.suffix in (".plist", ".txt") and "_helptext_" not in p.name)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The recorded powermetrics outputs (tests/fixtures/powermetrics)."""
    return POWERMETRICS


@pytest.fixture(scope="session")
def field_reports_dir() -> Path:
    """Inputs from real machines that soakd 0.1 read wrong (tests/fixtures/field-reports)."""
    return FIELD_REPORTS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # `powermetrics_file`: one test per recorded output file.
    if "powermetrics_file" in metafunc.fixturenames:
        files = powermetrics_output_files()
        metafunc.parametrize("powermetrics_file", files, ids=[p.name for p in files])
