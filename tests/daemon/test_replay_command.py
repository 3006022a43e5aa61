"""`soakd replay-powermetrics`: every recorded fixture replays with sensible values."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import datetime

import pytest

from daemon.cli import main

COMPONENTS = {"cpu", "gpu", "ane", "combined", "package", "dram"}
LEVELS = {"nominal", "light", "moderate", "heavy", "trapping", "sleeping"}


def replay(capsys, *args: str) -> tuple[int, list[dict], str]:
    code = main(["replay-powermetrics", *args])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    return code, lines, captured.err


def test_every_fixture_replays_with_sensible_values(capsys, powermetrics_file):
    code, samples, err = replay(capsys, str(powermetrics_file))
    assert code == 0, err
    assert err == ""
    assert samples
    for sample in samples:
        assert {"timestamp", "elapsed_seconds", "power_watts", "energy_joules",
                "thermal_pressure", "gpu_frequency_hz"} <= sample.keys()
        datetime.fromisoformat(sample["timestamp"])
        elapsed = sample["elapsed_seconds"]
        assert 0.05 < elapsed < 10  # -i 100 ms .. 5 s in these recordings
        assert sample["power_watts"], "every recording has at least one power figure"
        assert set(sample["power_watts"]) == set(sample["energy_joules"]) <= COMPONENTS
        for component, watts in sample["power_watts"].items():
            assert 0 <= watts < 200  # a laptop/mini SoC, not a space heater
            assert sample["energy_joules"][component] == pytest.approx(watts * elapsed)
        assert sample["thermal_pressure"] in LEVELS | {None}
        frequency = sample["gpu_frequency_hz"]
        assert frequency is None or 0 <= frequency < 3e9  # Hz, not MHz
        if {"cpu", "gpu", "ane", "combined"} <= sample["power_watts"].keys():
            parts = sum(sample["power_watts"][c] for c in ("cpu", "gpu", "ane"))
            # Combined = CPU + GPU + ANE, up to 1 mW text rounding (FORMAT.md 3.3).
            assert sample["power_watts"]["combined"] == pytest.approx(parts, abs=0.0015)


def test_m1_plist_numbers(capsys, fixtures_dir):
    code, [sample], _ = replay(capsys, str(fixtures_dir / "M1_plist_pumas_1.plist"))
    assert code == 0
    assert sample["timestamp"] == "2023-04-01T13:18:36+00:00"
    assert sample["elapsed_seconds"] == pytest.approx(2.01917875)
    assert sample["energy_joules"]["cpu"] == pytest.approx(0.089)
    assert sample["energy_joules"]["cpu"] / sample["elapsed_seconds"] == pytest.approx(
        0.0440773, rel=1e-4)  # the plist's own cpu_power, 44.0773 mW
    assert sample["energy_joules"]["gpu"] / sample["elapsed_seconds"] == pytest.approx(
        0.0153528, rel=1e-4)
    assert sample["energy_joules"]["ane"] / sample["elapsed_seconds"] == 0.0
    assert sample["thermal_pressure"] == "nominal"
    assert sample["gpu_frequency_hz"] == pytest.approx(714.836e6)


def test_m4pro_plist_gpu_energy_per_sample(capsys, fixtures_dir):
    name = "M4Pro_plist_powermetrics-go-matiasinsaurralde_1.plist"
    code, samples, _ = replay(capsys, str(fixtures_dir / name), "--format", "plist")
    assert code == 0
    assert [round(s["energy_joules"]["gpu"], 3) for s in samples] == [
        0.019, 0.107, 0.788, 0.146, 0.126]
    assert samples[2]["power_watts"]["gpu"] == pytest.approx(0.788 / 5.010073541)


def test_intel_package_watts(capsys, fixtures_dir):
    name = "Intel_text_capstone-source-code-optimizer_1.txt"
    code, samples, _ = replay(capsys, str(fixtures_dir / name), "--format", "text")
    assert code == 0
    assert [s["power_watts"]["package"] for s in samples][:3] == [1.63, 1.18, 9.65]
    assert samples[0]["energy_joules"]["package"] == pytest.approx(1.63 * 0.10287)
    assert samples[0]["timestamp"] == "2024-11-06T15:21:22-05:00"


def test_monterey_package_and_dram(capsys, fixtures_dir):
    code, samples, _ = replay(capsys, str(fixtures_dir / "M1Pro_text_EEDC_1.txt"))
    assert code == 0
    first = samples[0]
    assert first["power_watts"]["package"] == pytest.approx(1.085)
    assert first["power_watts"]["dram"] == pytest.approx(0.221)
    assert first["energy_joules"]["dram"] == pytest.approx(0.221 * 0.11336)
    assert "combined" not in first["power_watts"]
    assert first["gpu_frequency_hz"] == pytest.approx(52e6)


def test_help_text_is_a_one_line_error(capsys, fixtures_dir):
    code, samples, err = replay(capsys, str(fixtures_dir /
                                            "M1_helptext_apple-m1-power-consumption_1.txt"))
    assert code == 1 and samples == []
    assert err.count("\n") == 1 and err.startswith("soakd replay-powermetrics: error: ")


def test_wrong_explicit_format_is_an_error(capsys, fixtures_dir):
    code, _, err = replay(capsys, str(fixtures_dir / "M1_plist_pumas_1.plist"), "--format",
                          "text")
    assert code == 1 and "plist" in err
    code, _, err = replay(capsys, str(fixtures_dir / "M1_text_codecarbon_1.txt"), "--format",
                          "plist")
    assert code == 1 and err.count("\n") == 1


def test_missing_file_and_bad_format_are_usage_errors(capsys, tmp_path):
    code, _, err = replay(capsys, str(tmp_path / "nope.txt"))
    assert code == 2 and "cannot read" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["replay-powermetrics", "x", "--format", "xml"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_binary_garbage_is_an_error_not_a_traceback(capsys, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 10)
    code, _, err = replay(capsys, str(junk))
    assert code == 1 and "Traceback" not in err


def test_console_entry_point_end_to_end(fixtures_dir):
    done = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "replay-powermetrics",
         str(fixtures_dir / "M1Max_text_powermetrics-tui_1.txt")],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    [sample] = [json.loads(line) for line in done.stdout.splitlines()]
    assert sample["thermal_pressure"] == "nominal"
    assert sample["power_watts"]["combined"] == pytest.approx(0.054)
    assert math.isclose(sample["energy_joules"]["combined"], 0.054 * 5.03796)
