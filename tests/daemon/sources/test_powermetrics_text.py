"""The text parser on every recorded layout: Big Sur to macOS 26, Apple Silicon and Intel.

Expected numbers are copied from the fixture files (see SOURCES.md beside them).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from daemon.sources.powermetrics import PowermetricsParseError
from daemon.sources.powermetrics_text import parse_sample_time, parse_text


def parse(fixtures_dir, name):
    return parse_text((fixtures_dir / name).read_bytes())


def test_monterey_m1_codecarbon_package_and_dram(fixtures_dir):
    samples = parse(fixtures_dir, "M1_text_codecarbon_1.txt")
    assert len(samples) == 10
    first = samples[0]
    # "(104.51ms elapsed)", CPU 947, GPU 153, ANE 0, DRAM 220, Package 1473 mW, no Combined.
    assert first.elapsed_seconds == pytest.approx(0.10451)
    assert first.power_watts == pytest.approx({"cpu": 0.947, "gpu": 0.153, "ane": 0.0,
                                               "package": 1.473, "dram": 0.220})
    assert first.energy_joules["package"] == pytest.approx(1.473 * 0.10451)
    assert first.energy_joules["dram"] == pytest.approx(0.220 * 0.10451)
    assert "combined" not in first.power_watts
    assert (first.hw_model, first.os_build) == ("MacBookAir10,1", "21G115")
    assert first.timestamp == datetime(2023, 11, 10, 12, 37, 8,
                                       tzinfo=timezone(timedelta(hours=1)))
    assert samples[1].power_watts["package"] == pytest.approx(0.773)


def test_monterey_m1pro_eedc_gpu_section_and_duplicate_gpu_power(fixtures_dir):
    samples = parse(fixtures_dir, "M1Pro_text_EEDC_1.txt")
    assert len(samples) == 10
    first = samples[0]
    assert first.elapsed_seconds == pytest.approx(0.11336)
    assert first.power_watts == pytest.approx({"cpu": 0.300, "gpu": 0.009, "ane": 0.0,
                                               "package": 1.085, "dram": 0.221})
    assert first.gpu_frequency_hz == pytest.approx(52e6)  # "GPU active frequency: 52 MHz"
    assert first.cluster_frequency_hz.keys() == {"e-cluster", "p0-cluster", "p1-cluster"}
    assert samples[2].power_watts["gpu"] == pytest.approx(0.123)


def test_ventura_m1pro_eedc_combined_line(fixtures_dir):
    samples = parse(fixtures_dir, "M1Pro_text_EEDC_2.txt")
    assert len(samples) == 11
    assert samples[0].power_watts == pytest.approx({"cpu": 4.368, "gpu": 0.0, "ane": 0.0,
                                                    "combined": 4.368})
    assert samples[1].power_watts == pytest.approx({"cpu": 4.040, "gpu": 0.036, "ane": 0.0,
                                                    "combined": 4.077})
    assert samples[1].energy_joules["cpu"] == pytest.approx(4.040 * 0.11063)
    assert samples[0].gpu_frequency_hz == 0.0  # "GPU HW active frequency: 0 MHz"
    assert samples[0].os_build == "22G91"


def test_sonoma_m1max_all_samplers_with_thermal(fixtures_dir):
    [sample] = parse(fixtures_dir, "M1Max_text_powermetrics-tui_1.txt")
    assert sample.elapsed_seconds == pytest.approx(5.03796)
    assert sample.power_watts == pytest.approx({"cpu": 0.044, "gpu": 0.010, "ane": 0.0,
                                                "combined": 0.054})
    assert sample.energy_joules["combined"] == pytest.approx(0.054 * 5.03796)
    assert sample.thermal_pressure == "nominal"
    assert sample.gpu_frequency_hz == pytest.approx(418e6)


@pytest.mark.parametrize("name, count, first_cpu_mw, first_combined_mw, elapsed_ms, model", [
    ("M2Pro_text_Distributed-Carbon-Tracker_1.txt", 10, 4033, 4090, 105.38, "Mac14,9"),
    ("M3Pro_text_Air-Pollution-Prediction_1.txt", 10, 133, 133, 105.28, "Mac15,6"),
    ("M4_text_edi_scripts_1.txt", 10, 355, 355, 104.12, "Mac16,12"),
])
def test_sonoma_to_macos26_cpu_power_logs(fixtures_dir, name, count, first_cpu_mw,
                                          first_combined_mw, elapsed_ms, model):
    samples = parse(fixtures_dir, name)
    assert len(samples) == count
    first = samples[0]
    assert first.elapsed_seconds == pytest.approx(elapsed_ms / 1000)
    assert first.power_watts["cpu"] == pytest.approx(first_cpu_mw / 1000)
    assert first.power_watts["combined"] == pytest.approx(first_combined_mw / 1000)
    assert first.energy_joules["cpu"] / first.elapsed_seconds == pytest.approx(
        first_cpu_mw / 1000)
    assert first.hw_model == model


def test_macos26_m4_idle_cluster_reports_zero_frequency(fixtures_dir):
    # FORMAT.md pitfall 6: "P-Cluster HW active frequency: 0 MHz" in the first sample.
    first = parse(fixtures_dir, "M4_text_edi_scripts_1.txt")[0]
    assert first.cluster_frequency_hz["p-cluster"] == 0.0
    assert first.cluster_frequency_hz["e-cluster"] == pytest.approx(1080e6)


def test_big_sur_excerpt_without_header_clusters_total_is_cpu(fixtures_dir):
    samples = parse(fixtures_dir, "M1_text_apple-m1-power-consumption_2.txt")
    assert len(samples) == 10
    first = samples[0]
    assert first.hw_model is None  # an excerpt: samples 63-72, no stream header
    assert first.elapsed_seconds == pytest.approx(1.01577)
    assert first.power_watts == pytest.approx({"cpu": 1.153, "gpu": 2.557, "ane": 0.0,
                                               "package": 4.888, "dram": 0.687})
    assert first.energy_joules["gpu"] == pytest.approx(2.557 * 1.01577)
    assert first.gpu_frequency_hz == pytest.approx(1252e6)
    assert first.timestamp == datetime(2021, 2, 28, 0, 18, 7,
                                       tzinfo=timezone(timedelta(hours=-8)))


def test_intel_package_watts(fixtures_dir):
    samples = parse(fixtures_dir, "Intel_text_capstone-source-code-optimizer_1.txt")
    watts = [s.power_watts["package"] for s in samples]
    assert watts == pytest.approx([1.63, 1.18, 9.65, 1.31, 2.51, 4.84, 1.48, 1.62, 1.32, 0.79])
    first = samples[0]
    assert set(first.power_watts) == {"package"}  # W on Intel, not mW
    assert first.energy_joules["package"] == pytest.approx(1.63 * 0.10287)
    assert first.cluster_frequency_hz["system_average"] == pytest.approx(1609.54e6)
    assert (first.hw_model, first.os_build) == ("MacBookPro16,1", "23E214")


def test_help_text_is_not_output(fixtures_dir):
    with pytest.raises(PowermetricsParseError, match="Sampled system activity"):
        parse(fixtures_dir, "M1_helptext_apple-m1-power-consumption_1.txt")


def test_leading_nuls_and_crlf_are_tolerated(fixtures_dir):
    raw = (fixtures_dir / "M1_text_codecarbon_1.txt").read_bytes()
    samples = parse_text(b"\x00" * 28477 + raw.replace(b"\n", b"\r\n"))
    assert len(samples) == 10
    assert samples[0].power_watts["package"] == pytest.approx(1.473)


def test_truncated_last_sample_keeps_what_it_has(fixtures_dir):
    raw = (fixtures_dir / "M1Pro_text_EEDC_2.txt").read_text()
    cut = raw[:raw.index("Combined Power", raw.index("20:08:21 2023 -0500) (110.63ms"))]
    samples = parse_text(cut)
    assert len(samples) == 2
    assert "combined" not in samples[1].power_watts
    assert samples[1].power_watts["cpu"] == pytest.approx(4.040)


def test_plist_given_to_text_parser_is_refused(fixtures_dir):
    with pytest.raises(PowermetricsParseError, match="plist"):
        parse(fixtures_dir, "M1_plist_pumas_1.plist")


def test_zero_elapsed_is_an_error():
    with pytest.raises(PowermetricsParseError, match="sample 1"):
        parse_text("*** Sampled system activity (Tue Nov 28 14:37:01 2023 +0100) (0.00ms "
                   "elapsed) ***\n")


@pytest.mark.parametrize("text, expected", [
    ("Tue Nov 28 14:37:01 2023 +0100", datetime(2023, 11, 28, 14, 37, 1,
                                                tzinfo=timezone(timedelta(hours=1)))),
    ("Wed Nov  6 15:21:22 2024 -0500", datetime(2024, 11, 6, 15, 21, 22,
                                                tzinfo=timezone(timedelta(hours=-5)))),
    ("Tue Feb  3 16:14:59 2026 +0530", datetime(2026, 2, 3, 16, 14, 59,
                                                tzinfo=timezone(timedelta(hours=5, minutes=30)))),
    ("Fri Feb 31 00:00:00 2023 +0000", None),
    ("yesterday", None),
])
def test_sample_time(text, expected):
    assert parse_sample_time(text) == expected
