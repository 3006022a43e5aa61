"""Property tests: every parser, fed random, truncated or mangled input, either returns
well-formed samples or raises its own parse error class. Nothing else may escape."""

from __future__ import annotations

import math
import plistlib
from datetime import datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.sources.powermetrics import (
    PlistStreamSplitter,
    PowermetricsParseError,
    PowermetricsSample,
    parse_plist_document,
    parse_plist_stream,
    sample_from_plist,
)
from daemon.sources.powermetrics_text import parse_text
from daemon.sources.replay import parse_powermetrics
from daemon.sources.thermal_macos import ThermalParseError, parse_notifyutil, parse_pmset_therm

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def check_samples(samples: list[PowermetricsSample]) -> None:
    assert isinstance(samples, list)
    for sample in samples:
        assert isinstance(sample, PowermetricsSample)
        assert math.isfinite(sample.elapsed_seconds) and sample.elapsed_seconds > 0
        for values in (sample.energy_joules, sample.power_watts, sample.cluster_frequency_hz):
            assert all(math.isfinite(v) and v >= 0 for v in values.values())
        assert sample.energy_joules.keys() == sample.power_watts.keys()
        assert sample.thermal_pressure is None or isinstance(sample.thermal_pressure, str)
        sample.to_json()


def expect_samples_or_parse_error(parse, data) -> None:
    try:
        samples = parse(data)
    except PowermetricsParseError:
        return
    check_samples(samples)


def mangle(data: bytes, draw) -> bytes:
    """Truncate, cut a slice out, or splice random bytes into real output."""
    start = draw(st.integers(0, len(data)))
    end = draw(st.integers(start, min(len(data), start + 400)))
    action = draw(st.sampled_from(["truncate", "cut", "splice"]))
    if action == "truncate":
        return data[:start]
    if action == "cut":
        return data[:start] + data[end:]
    return data[:start] + draw(st.binary(max_size=40)) + data[end:]


_CACHE: dict[Path, bytes] = {}


def fixture_bytes(directory: Path, name: str) -> bytes:
    path = directory / name
    if path not in _CACHE:
        _CACHE[path] = path.read_bytes()
    return _CACHE[path]


PLISTS = ["M1_plist_pumas_1.plist", "M4Pro_plist_powermetrics-go-matiasinsaurralde_1.plist"]
TEXTS = ["M1_text_codecarbon_1.txt", "M1Pro_text_EEDC_2.txt", "M1Max_text_powermetrics-tui_1.txt",
         "Intel_text_capstone-source-code-optimizer_1.txt", "M4_text_edi_scripts_1.txt",
         "M1_text_apple-m1-power-consumption_2.txt"]


# --- plist ---


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_plist_stream_random_bytes(data):
    expect_samples_or_parse_error(parse_plist_stream, data)
    expect_samples_or_parse_error(lambda d: [parse_plist_document(d)], data)


@SETTINGS
@given(data=st.data())
def test_plist_stream_mangled_real_output(fixtures_dir, data):
    raw = fixture_bytes(fixtures_dir, data.draw(st.sampled_from(PLISTS)))
    expect_samples_or_parse_error(parse_plist_stream, mangle(raw, data.draw))


scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
           | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)))
keys = st.sampled_from(["elapsed_ns", "processor", "gpu", "cpu_energy", "gpu_energy",
                        "ane_energy", "combined_power", "package_energy", "dram_energy",
                        "freq_hz", "clusters", "name", "thermal_pressure", "timestamp",
                        "hw_model", "kern_osversion"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(keys, inner, max_size=5), max_leaves=12)


def _encodable(value):
    if value is None:
        return ""
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    if isinstance(value, dict):
        return {k: _encodable(v) for k, v in value.items()}
    return value


@SETTINGS
@given(document=st.dictionaries(keys, values, max_size=8))
def test_plist_documents_with_random_structure(document):
    try:
        sample = sample_from_plist(document)
    except PowermetricsParseError:
        pass
    else:
        check_samples([sample])
    encoded = plistlib.dumps(_encodable(document), fmt=plistlib.FMT_XML)
    expect_samples_or_parse_error(parse_plist_stream, encoded)


@SETTINGS
@given(data=st.data())
def test_splitter_on_random_chunking(fixtures_dir, data):
    raw = mangle(fixture_bytes(fixtures_dir, PLISTS[1]), data.draw)
    splitter = PlistStreamSplitter()
    position = 0
    while position < len(raw):
        size = data.draw(st.integers(1, 4000))
        try:
            documents = splitter.feed(raw[position:position + size])
        except PowermetricsParseError:
            documents = []
        for document in documents:
            expect_samples_or_parse_error(lambda d: [parse_plist_document(d)], document)
        position += size


# --- text ---


@SETTINGS
@given(text=st.text(max_size=1500))
def test_text_random(text):
    expect_samples_or_parse_error(parse_text, text)


line = st.sampled_from([
    "*** Sampled system activity (Tue Nov 28 14:37:01 2023 +0100) (1006.50ms elapsed) ***",
    "*** Sampled system activity (Fri Feb 31 14:37:01 2023 +0100) (0ms elapsed) ***",
    "**** Processor usage ****", "**** GPU usage ****", "**** Thermal pressure ****",
    "CPU Power: 12 mW", "GPU Power: 99999999999999999999999999 mW", "ANE Power: .5 mW",
    "Combined Power (CPU + GPU + ANE): 1237 mW", "Package Power: 7. mW",
    "Intel energy model derived package power (CPUs+GT+SA): 1.63W",
    "Current pressure level: Heavy", "Current pressure level: ???",
    "GPU HW active frequency: 1e400 MHz", "E-Cluster HW active frequency: 972 MHz",
    "Machine model: Mac16,12", "OS version: 25C56", "\x00", "",
]) | st.text(max_size=40)


@SETTINGS
@given(lines=st.lists(line, max_size=40))
def test_text_random_lines_of_the_right_shape(lines):
    expect_samples_or_parse_error(parse_text, "\n".join(lines))


@SETTINGS
@given(data=st.data())
def test_text_mangled_real_output(fixtures_dir, data):
    raw = fixture_bytes(fixtures_dir, data.draw(st.sampled_from(TEXTS)))
    expect_samples_or_parse_error(parse_text, mangle(raw, data.draw))


@SETTINGS
@given(data=st.data())
def test_auto_detect_on_mangled_output(fixtures_dir, data):
    raw = fixture_bytes(fixtures_dir, data.draw(st.sampled_from(PLISTS + TEXTS)))
    expect_samples_or_parse_error(parse_powermetrics, mangle(raw, data.draw))


# --- thermal ---


@SETTINGS
@given(text=st.text(max_size=300) | st.builds(
    lambda a, b: a + "com.apple.system.thermalpressurelevel " + b, st.text(max_size=20),
    st.text(max_size=20)))
def test_notifyutil_random(text):
    try:
        value = parse_notifyutil(text)
    except ThermalParseError:
        return
    assert isinstance(value, int) and value >= 0


@SETTINGS
@given(text=st.text(max_size=300) | st.lists(st.sampled_from([
    "Note: No thermal warning level has been recorded", "CPU_Speed_Limit \t= 35",
    "Thermal Warning Level = 100", "CPU_Scheduler_Limit = ", "\tCPU_Available_CPUs \t= 8",
    "Performance Warning Level = 99999999999"]) | st.text(max_size=20)).map("\n".join))
def test_pmset_random(text):
    try:
        therm = parse_pmset_therm(text)
    except ThermalParseError:
        return
    assert therm.level is None or isinstance(therm.level, str)
