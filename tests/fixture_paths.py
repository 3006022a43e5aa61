"""Where the recorded inputs live: inside the repository, never beside it."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
POWERMETRICS = FIXTURES / "powermetrics"
FIELD_REPORTS = FIXTURES / "field-reports"

if not POWERMETRICS.is_dir() or not FIELD_REPORTS.is_dir():  # a broken checkout, not a skip
    raise RuntimeError(f"recorded test fixtures missing under {FIXTURES}")
