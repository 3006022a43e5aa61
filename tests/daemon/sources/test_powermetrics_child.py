"""The long-lived powermetrics child, with a fake `powermetrics` executable on PATH.

The fake prints the recorded M4 Pro plists NUL-separated (as the real tool does), or dies, or
rejects the ane_power sampler, so the reader, the back-off restart and the fallbacks run here
on Linux.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from daemon.sources.base import SourceError
from daemon.sources.powermetrics import PowermetricsSource, powermetrics_command

M4PRO = "M4Pro_plist_powermetrics-go-matiasinsaurralde_1.plist"

FAKE = textwrap.dedent("""\
    #!{python}
    import os, sys, time
    log = os.environ["FAKE_PM_LOG"]
    with open(log, "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\\n")
    mode = os.environ.get("FAKE_PM_MODE", "stream")
    docs = open(os.environ["FAKE_PM_FIXTURE"], "rb").read().split(b"\\x00")
    out = sys.stdout.buffer
    if mode == "reject_ane" and any("ane_power" in a for a in sys.argv[1:]):
        sys.stderr.write("powermetrics: unrecognized sampler: ane_power\\n")
        sys.exit(64)
    if mode == "die_now":
        sys.stderr.write("boom\\n")
        sys.exit(3)
    for i, doc in enumerate(docs):
        if i:
            out.write(b"\\x00")  # the separator comes before the next document
        out.write(doc)
        out.flush()
        if mode == "die_after_one":
            sys.stderr.write("lost the SMC\\n")
            sys.exit(1)
        time.sleep(0.03)
    time.sleep(60)  # like the real tool: keep running until signalled
""")


@pytest.fixture
def fake_powermetrics(tmp_path, monkeypatch, fixtures_dir):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "powermetrics"
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "invocations.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PM_LOG", str(log))
    monkeypatch.setenv("FAKE_PM_FIXTURE", str(fixtures_dir / M4PRO))

    def invocations() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return invocations


def make_source(**kwargs) -> PowermetricsSource:
    options = {"interval_ms": 50, "sudo": "never", "platform": "darwin",
               "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "stall_s": 30.0}
    options.update(kwargs)
    return PowermetricsSource(**options)


def poll(source, until, timeout=10.0):
    """Read every 20 ms; returns (readings, errors) once until(readings, errors) holds."""
    readings, errors = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            readings.append(source.read())
        except SourceError as exc:
            errors.append(str(exc))
        if until(readings, errors):
            return readings, errors
        time.sleep(0.02)
    raise AssertionError(f"timed out: {len(readings)} readings, errors {errors[-3:]}")


def total(readings, component="gpu"):
    return sum(r.energy_joules.get(component, 0.0) for r in readings)


def test_streams_nul_separated_plists_and_closes_the_child(fake_powermetrics):
    source = make_source()
    assert source.available() == (True, "ok")
    try:
        readings, errors = poll(source, lambda r, e: total(r) >= 1.186 - 1e-9)
    finally:
        source.close()
    assert errors == []
    assert total(readings) == pytest.approx(1.186)  # 19+107+788+146+126 mJ
    window = sum(r.energy_window_seconds or 0.0 for r in readings)
    assert window == pytest.approx(25.052688415)  # the recorded elapsed_ns, not -i
    assert readings[-1].clock_hertz["gpu"] == pytest.approx(458.421e6)
    [args] = fake_powermetrics()
    assert args == "-f plist -i 50 -b 0 --samplers cpu_power,gpu_power,ane_power,thermal"
    assert source._process is None


def test_child_that_dies_is_restarted_with_backoff(fake_powermetrics, monkeypatch):
    monkeypatch.setenv("FAKE_PM_MODE", "die_after_one")
    source = make_source()
    try:
        readings, errors = poll(source, lambda r, e: len(fake_powermetrics()) >= 3
                                and total(r) >= 3 * 0.019 - 1e-9)
    finally:
        source.close()
    assert any("powermetrics exited with code 1: lost the SMC; restarting in 0.05 s" in e
               for e in errors)
    assert total(readings) == pytest.approx(0.019 * len(fake_powermetrics()), abs=0.02)
    assert source.starts >= 3


def test_backoff_doubles_up_to_the_maximum(fake_powermetrics, monkeypatch):
    monkeypatch.setenv("FAKE_PM_MODE", "die_now")
    source = make_source()
    try:
        _, errors = poll(source, lambda r, e: sum("exited" in x for x in e) >= 4)
    finally:
        source.close()
    delays = [e.rsplit("restarting in ", 1)[1] for e in errors if "exited" in e]
    assert delays[:4] == ["0.05 s", "0.1 s", "0.2 s", "0.2 s"]
    assert all("code 3: boom" in e for e in errors if "exited" in e)


def test_ane_power_sampler_dropped_when_rejected(fake_powermetrics, monkeypatch):
    monkeypatch.setenv("FAKE_PM_MODE", "reject_ane")
    source = make_source()
    try:
        _, errors = poll(source, lambda r, e: total(r) > 0)
    finally:
        source.close()
    first, second = fake_powermetrics()[:2]
    assert "ane_power" in first and "ane_power" not in second
    assert "cpu_power,gpu_power,thermal" in second
    assert any("unrecognized sampler" in e for e in errors)


def test_availability_reasons(tmp_path, monkeypatch):
    ok, reason = make_source(platform="linux").available()
    assert not ok and "needs macOS" in reason
    monkeypatch.setenv("PATH", str(tmp_path))
    ok, reason = make_source(executable="powermetrics-missing").available()
    assert not ok and "not installed" in reason


def test_sudo_refusal_is_a_reason_not_a_prompt(fake_powermetrics, tmp_path, monkeypatch):
    sudo = Path(tmp_path / "bin" / "sudo")
    sudo.write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    sudo.chmod(0o755)
    ok, reason = make_source(sudo="always").available()
    assert not ok and "passwordless sudo" in reason


def test_command_line():
    assert powermetrics_command(1000, ["cpu_power", "thermal"], "/usr/bin/powermetrics",
                                sudo=True) == [
        "sudo", "-n", "/usr/bin/powermetrics", "-f", "plist", "-i", "1000", "-b", "0",
        "--samplers", "cpu_power,thermal"]


def test_closed_source_refuses_reads():
    source = make_source()
    source.close()
    with pytest.raises(SourceError, match="closed"):
        source.read()


def test_sudo_check_asks_for_the_exact_command_the_sudoers_rule_allows(fake_powermetrics, tmp_path):
    """The rule in launchd/soakd.sudoers.in allows one fixed argument list; `sudo -n -l` with the
    bare path would not match it, so the check must name the arguments too."""
    record = tmp_path / "sudo-args"
    sudo = Path(tmp_path / "bin" / "sudo")
    sudo.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}\nexit 0\n")
    sudo.chmod(0o755)
    source = make_source(sudo="always", interval_ms=1000)
    ok, _ = source.available()
    args = record.read_text().splitlines()
    assert ok
    assert args[:2] == ["-n", "-l"]
    # the same list the sudoers rule is rendered with (daemon/install/render.py)
    assert args[2:] == powermetrics_command(1000, source.samplers, args[2], sudo=False)


def test_child_restarted_for_size_leaves_a_gap_and_invents_no_energy(fake_powermetrics):
    """A child whose RSS passes the bound is replaced; the time between the old child's last
    sample and the new child's start is a gap, and only the samples delivered count."""
    source = make_source(max_rss_bytes=1 * 2**20, rss_check_s=0.5)  # any python child is bigger
    one_child = 1.186  # J: the five recorded documents
    try:
        readings, errors = poll(source, lambda r, e: total(r) >= 2 * one_child - 1e-9)
    finally:
        source.close()
    assert errors == []
    assert source.restarts["restarted_for_size"] >= 1 and source.starts >= 2
    restarts = [n for r in readings for n in r.notes if n.startswith("restarted_for_size: ")]
    assert restarts and "RSS" in restarts[0]
    gaps = [g for r in readings for g in r.gaps]
    assert gaps and all(end > start for start, end in gaps)
    # energy is exactly what the two children's windows measured: nothing for the gap
    assert total(readings) == pytest.approx(2 * one_child)
    window = sum(r.energy_window_seconds or 0.0 for r in readings)
    assert window == pytest.approx(2 * 25.052688415)


def test_child_restarted_on_schedule(fake_powermetrics):
    clock_offset = [0.0]
    source = make_source(max_age_s=3600, max_rss_bytes=0, clock=lambda: time.monotonic() + clock_offset[0])
    try:
        poll(source, lambda r, e: total(r) > 0)
        clock_offset[0] = 3600.0  # an hour later
        reading = source.read()
        poll(source, lambda r, e: len(fake_powermetrics()) == 2)  # the new child runs
    finally:
        source.close()
    assert [n.split(":")[0] for n in reading.notes] == ["restarted_for_age"]
    assert source.starts == 2 and source.restarts == {"restarted_for_age": 1, "restarted_for_size": 0}
