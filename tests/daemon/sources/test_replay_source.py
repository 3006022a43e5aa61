"""The replay source: one recorded sample per read, looping, both formats."""

from __future__ import annotations

import pytest

from daemon.sources.base import SourceUnavailable
from daemon.sources.replay import ReplaySource, detect_format, parse_powermetrics


def test_plist_replay_loops_sample_by_sample(fixtures_dir):
    source = ReplaySource(fixtures_dir / "M4Pro_plist_powermetrics-go-matiasinsaurralde_1.plist")
    assert source.available() == (True, "ok")
    readings = [source.read() for _ in range(7)]
    assert [round(r.energy_joules["gpu"] * 1000) for r in readings] == [
        19, 107, 788, 146, 126, 19, 107]
    assert readings[0].energy_window_seconds == pytest.approx(5.004758375)
    assert readings[2].clock_hertz["gpu"] == pytest.approx(867.616e6)


def test_text_replay_without_loop_ends(fixtures_dir):
    source = ReplaySource(fixtures_dir / "M1Max_text_powermetrics-tui_1.txt", loop=False)
    reading = source.read()
    assert reading.thermal_pressure == "nominal"
    assert reading.energy_joules["combined"] == pytest.approx(0.054 * 5.03796)
    with pytest.raises(SourceUnavailable, match="finished"):
        source.read()


def test_missing_file_is_unavailable(tmp_path):
    ok, reason = ReplaySource(tmp_path / "none.plist").available()
    assert not ok and "cannot replay" in reason


def test_detect_format(fixtures_dir):
    assert detect_format((fixtures_dir / "M1_plist_pumas_1.plist").read_bytes()) == "plist"
    assert detect_format(b"\x00\x00\n<?xml version=") == "plist"
    assert detect_format((fixtures_dir / "M1_text_codecarbon_1.txt").read_bytes()) == "text"
    with pytest.raises(ValueError, match="unknown format"):
        parse_powermetrics(b"", "csv")
