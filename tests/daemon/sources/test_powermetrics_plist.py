"""The plist parser on the recorded plists, and on the shapes FORMAT.md describes."""

from __future__ import annotations

import plistlib
from datetime import datetime, timezone

import pytest

from daemon.sources.powermetrics import (
    PlistStreamSplitter,
    PowermetricsParseError,
    build_sample,
    parse_plist_document,
    parse_plist_stream,
    reading_from_samples,
    sample_from_plist,
    split_plist_stream,
)

M1 = "M1_plist_pumas_1.plist"
M4PRO = "M4Pro_plist_powermetrics-go-matiasinsaurralde_1.plist"


def test_m1_energy_over_real_elapsed_matches_the_files_own_power_keys(fixtures_dir):
    raw = (fixtures_dir / M1).read_bytes()
    [sample] = parse_plist_stream(raw)
    processor = plistlib.loads(raw)["processor"]
    assert sample.elapsed_seconds == pytest.approx(2.01917875)
    # 89 mJ / 2.019 s = 44.08 mW = the file's cpu_power 44.0773 (FORMAT.md 2.3).
    assert sample.energy_joules["cpu"] == pytest.approx(0.089)
    assert sample.energy_joules["gpu"] == pytest.approx(0.031)
    assert sample.energy_joules["ane"] == 0.0
    for component in ("cpu", "gpu", "ane"):
        expected_watts = processor[f"{component}_power"] / 1000
        assert sample.power_watts[component] == pytest.approx(expected_watts, rel=1e-4, abs=1e-9)
    # combined has only a power key on Ventura+: energy is derived from it.
    assert sample.power_watts["combined"] == pytest.approx(0.0594301)
    assert sample.energy_joules["combined"] == pytest.approx(0.0594301 * 2.01917875)
    assert "package" not in sample.energy_joules and "dram" not in sample.energy_joules


def test_m1_gauges_units_and_metadata(fixtures_dir):
    [sample] = parse_plist_stream((fixtures_dir / M1).read_bytes())
    assert sample.gpu_frequency_hz == pytest.approx(714.836e6)  # gpu.freq_hz is MHz
    assert sample.cluster_frequency_hz == {"e-cluster": pytest.approx(1.02287e9),
                                           "p-cluster": pytest.approx(6.18173e8)}
    assert sample.thermal_pressure == "nominal"
    assert sample.timestamp == datetime(2023, 4, 1, 13, 18, 36, tzinfo=timezone.utc)
    assert (sample.hw_model, sample.os_build) == ("MacBookPro17,1", "22E252")


def test_m4pro_gpu_only_stream_of_five_nul_separated_documents(fixtures_dir):
    samples = parse_plist_stream((fixtures_dir / M4PRO).read_bytes())
    assert len(samples) == 5
    assert [round(s.energy_joules["gpu"] * 1000) for s in samples] == [19, 107, 788, 146, 126]
    # FORMAT.md 2.4: 788 mJ / 5.01 s ~ 157 mW, with no gpu_power key in the file.
    assert samples[2].power_watts["gpu"] == pytest.approx(0.788 / 5.010073541)
    assert samples[2].power_watts["gpu"] == pytest.approx(0.157, abs=0.001)
    assert samples[2].gpu_frequency_hz == pytest.approx(867.616e6)
    assert all(set(s.energy_joules) == {"gpu"} for s in samples)
    assert all(s.thermal_pressure is None for s in samples)
    assert sum(s.energy_joules["gpu"] for s in samples) == pytest.approx(1.186)


def _doc(processor: dict | None = None, gpu: dict | None = None, **top) -> dict:
    doc = {"is_delta": True, "elapsed_ns": 1_000_000_000, **top}
    if processor is not None:
        doc["processor"] = processor
    if gpu is not None:
        doc["gpu"] = gpu
    return doc


def test_monterey_keys_package_and_dram_without_combined():
    # macOS 12 plists: package_energy / dram_energy, no combined_power (asitop #51, PR #52).
    sample = sample_from_plist(_doc({"cpu_energy": 500, "gpu_energy": 100, "ane_energy": 0,
                                     "package_energy": 900, "dram_energy": 200},
                                    elapsed_ns=2_000_000_000))
    assert sample.energy_joules == {"cpu": 0.5, "gpu": 0.1, "ane": 0.0, "package": 0.9,
                                    "dram": 0.2}
    assert sample.power_watts["package"] == pytest.approx(0.45)
    assert sample.power_watts["dram"] == pytest.approx(0.1)
    assert "combined" not in sample.power_watts


def test_processor_gpu_energy_wins_over_gpu_dict():
    # M2 Ultra: processor.gpu_energy 72607 vs gpu.gpu_energy 73491 (FORMAT.md 2.4).
    sample = sample_from_plist(_doc({"gpu_energy": 72607}, {"gpu_energy": 73491}))
    assert sample.energy_joules["gpu"] == pytest.approx(72.607)


def test_unknown_thermal_string_is_kept_opaque():
    sample = sample_from_plist(_doc(thermal_pressure="Scorching Hot"))
    assert sample.thermal_pressure == "scorching_hot"


@pytest.mark.parametrize("doc, message", [
    ({"processor": {}}, "elapsed_ns"),
    ({"elapsed_ns": 0}, "elapsed time is zero"),
    ({"elapsed_ns": "1000"}, "not a number"),
    ({"elapsed_ns": 10, "processor": {"cpu_energy": True}}, "not a number"),
    ({"elapsed_ns": 10, "processor": []}, "not a dict"),
    ({"elapsed_ns": 10, "processor": {"cpu_energy": -5}}, "non-negative"),
])
def test_bad_documents_raise_parse_error(doc, message):
    with pytest.raises(PowermetricsParseError, match=message):
        sample_from_plist(doc)


def test_stream_framing_leading_nuls_empty_chunks_and_partial_tail(fixtures_dir):
    docs = (fixtures_dir / M4PRO).read_bytes().split(b"\x00")
    stream = b"\x00" * 50 + docs[0] + b"\x00\x00\x00" + docs[1] + b"\x00" + docs[2][:300]
    samples = parse_plist_stream(stream)
    assert len(samples) == 2  # the cut-off third document is dropped, as asitop does
    complete, rest = split_plist_stream(stream)
    assert len(complete) == 2 and rest == docs[2][:300]


def test_damaged_middle_document_is_an_error(fixtures_dir):
    docs = (fixtures_dir / M4PRO).read_bytes().split(b"\x00")
    stream = docs[0] + b"\x00<?xml version='1.0'?><plist><dict><key>x</key></plist>\x00" + docs[1]
    with pytest.raises(PowermetricsParseError, match="plist document 2"):
        parse_plist_stream(stream)


def test_no_document_at_all_is_an_error():
    with pytest.raises(PowermetricsParseError):
        parse_plist_stream(b"\x00\x00\n")
    with pytest.raises(PowermetricsParseError):
        parse_plist_document(b"bplist00garbage")


def test_splitter_feeds_byte_by_byte_without_lagging_a_sample(fixtures_dir):
    raw = (fixtures_dir / M4PRO).read_bytes()
    splitter = PlistStreamSplitter()
    got: list[bytes] = []
    positions = []
    for i in range(0, len(raw), 97):
        new = splitter.feed(raw[i:i + 97])
        got += new
        positions += [i] * len(new)
    assert len(got) == 5
    # The last document is complete as soon as its </plist> arrives, without a trailing NUL.
    assert [parse_plist_document(d).energy_joules["gpu"] for d in got][-1] == pytest.approx(0.126)


def test_reading_sums_energy_over_the_measured_windows():
    a = build_sample(elapsed_seconds=1.02, energy_joules={"cpu": 2.0}, thermal_pressure="heavy",
                     gpu_frequency_hz=1e9)
    b = build_sample(elapsed_seconds=0.98, energy_joules={"cpu": 1.0, "gpu": 0.5},
                     thermal_pressure="nominal")
    reading = reading_from_samples([a, b])
    assert reading.energy_joules == {"cpu": 3.0, "gpu": 0.5}
    assert reading.energy_window_seconds == pytest.approx(2.0)
    assert reading.thermal_pressure == "nominal"
    assert "gpu" not in reading.clock_hertz  # the newest sample had no GPU frequency
    idle = reading_from_samples([], last=a)
    assert idle.energy_joules == {} and idle.energy_window_seconds is None
    assert idle.thermal_pressure == "heavy" and idle.clock_hertz["gpu"] == 1e9


def test_field_report_intel_mac_package_joules_is_package_energy(field_reports_dir, tmp_path):
    """Intel Macs: `processor.package_joules` (J) and `package_watts` (W), no `*_energy` keys."""
    from daemon.energy import breakdown
    from daemon.sampler import Sampler
    from daemon.sources.replay import ReplaySource

    raw = (field_reports_dir / "intel-mac_plist_package-joules.plist").read_bytes()
    first, second = parse_plist_stream(raw)
    assert first.energy_joules == {"package": pytest.approx(27.5028)}
    assert first.elapsed_seconds == pytest.approx(5.004803923)
    assert first.power_watts == {"package": pytest.approx(5.4953, abs=5e-5)}
    assert second.energy_joules == {"package": pytest.approx(25.2131)}
    assert second.power_watts == {"package": pytest.approx(5.0361, abs=5e-5)}
    assert first.cpu_frequency_hz == pytest.approx(2.11453e9)
    reading = reading_from_samples([first, second])
    assert reading.energy_joules == {"package": pytest.approx(27.5028 + 25.2131)}
    assert reading.clock_hertz == {"cpu": pytest.approx(1.93827e9)}  # the newest sample's
    assert breakdown(reading.energy_joules).joules == pytest.approx(52.7159)
    # through the sampler (a replay of the capture): power over the recorded windows
    snap = Sampler([ReplaySource(field_reports_dir / "intel-mac_plist_package-joules.plist")]).sample_once()
    assert snap.power_watts == {("replay", "package"): pytest.approx(5.4953, abs=5e-5)}
    assert snap.power_method == {("replay", "package"): "counter"}


def test_a_package_watts_only_sample_derives_its_energy():
    sample = sample_from_plist({"elapsed_ns": 2_000_000_000, "processor": {"package_watts": 4.0}})
    assert sample.energy_joules == {"package": pytest.approx(8.0)}
