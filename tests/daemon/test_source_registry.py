"""The telemetry source registry: sources found by import, config keys and defaults from it, and
a stand-in source module that shows up in a real daemon's `/metrics` and `soakd status` with no
other edit (issue 15)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from daemon_process import REPO, Daemon, write_config
from fake_sources import install_source_plugin

import daemon.sources
from daemon.config import ConfigError, load_config, source_keys
from daemon.sampler import default_sources
from daemon.sources import registry
from daemon.sources.base import NullSource


@pytest.fixture
def isolated_registry(monkeypatch):
    monkeypatch.setattr(registry, "_SPECS", dict(registry._SPECS))


def test_every_source_module_registered_itself():
    names = [spec.name for spec in registry.specs()]
    assert names == ["replay", "powermetrics", "thermal_notify", "thermal_state", "pmset", "nvml", "rapl",
                     "sysfs_thermal", "memory"]
    assert all(spec.description for spec in registry.specs())


def test_config_keys_are_the_registry_switches_and_options(tmp_path: Path):
    keys = source_keys()
    assert set(keys) == {spec.name for spec in registry.specs()} | {
        "powermetrics_interval_ms", "powermetrics_restart_hours", "powermetrics_max_rss_mib", "rapl_root",
        "thermal_root", "replay_file"}
    config = load_config(environ={"SOAKD_SOURCES_SYSFS_THERMAL": "off", "SOAKD_SOURCES_RAPL_ROOT": str(tmp_path),
                                  "XDG_CONFIG_HOME": str(tmp_path)})
    assert config.sources == {"sysfs_thermal": False, "rapl_root": str(tmp_path)}


@pytest.mark.parametrize("text, message", [
    ("[sources]\ngpu_magic = true\n", "sources.gpu_magic = True: unknown setting (known: memory, nvml,"),
    ("[sources]\npowermetrics_interval_ms = 0\n", "sources.powermetrics_interval_ms = 0: must be at least 1"),
    ("[sources]\nrapl_root = ''\n", "sources.rapl_root = '': expected a non-empty string"),
])
def test_bad_source_settings_are_one_line_errors(tmp_path: Path, text: str, message: str):
    path = tmp_path / "soakd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert str(error.value).startswith(message)


def test_powermetrics_hygiene_options_reach_the_source():
    [source] = [s for s in registry.build_sources({"powermetrics_restart_hours": 0.5, "powermetrics_max_rss_mib": 64},
                                                  platform="darwin") if s.name == "powermetrics"]
    assert (source.max_age_s, source.max_rss_bytes) == (1800.0, 64 * 2**20)  # type: ignore[attr-defined]


def test_defaults_per_platform_and_switches():
    mac = [s.name for s in registry.build_sources({}, platform="darwin")]
    assert mac == ["powermetrics", "thermal_notify", "thermal_state", "pmset", "memory"]
    linux = [s.name for s in registry.build_sources({}, platform="linux")]
    assert linux == ["nvml", "rapl", "sysfs_thermal", "memory"]
    assert [s.name for s in registry.build_sources({"thermal_root": "/x", "memory": False}, platform="darwin")] == [
        "powermetrics", "thermal_notify", "thermal_state", "pmset", "sysfs_thermal"]
    if sys.platform.startswith("linux"):
        assert [s.name for s in default_sources()] == linux


def test_name_and_option_clashes_are_refused(isolated_registry):
    def spec(name, *options):
        return registry.SourceSpec(name=name, build=lambda _o: NullSource(name, "x"), description="x",
                                   options=tuple(registry.SourceOption(o, registry.parse_str, "x") for o in options))

    with pytest.raises(registry.RegistryError, match="option 'rapl_root'"):
        registry.register(spec("other", "rapl_root"))
    with pytest.raises(registry.RegistryError, match="'nvml'"):
        registry.register(spec("x2", "nvml"))
    with pytest.raises(registry.RegistryError, match="two telemetry sources are named 'nvml'"):
        registry.register(spec("nvml"))


def test_a_plugin_that_fails_to_import_is_a_down_source(isolated_registry):
    daemon.sources._broken_plugin("acme_gpu", "ImportError: no module named acme")
    source = registry.get("acme_gpu").build({})
    ok, reason = source.available()
    assert not ok and reason == "unavailable: plugin 'acme_gpu' failed to import: ImportError: no module named acme"


STANDIN = textwrap.dedent('''\
    """A stand-in telemetry source installed beside soakd (entry point soakd.sources)."""
    from daemon.sources.base import Reading, Source
    from daemon.sources.registry import SourceOption, SourceSpec, parse_positive_float, register


    class StandinSource(Source):
        name = "standin"

        def __init__(self, watts: float) -> None:
            self.watts = watts

        def available(self):
            return True, "ok: stand-in"

        def read(self):
            return Reading(energy_joules={"standin_rail": self.watts}, energy_window_seconds=1.0,
                           temperatures_celsius={"standin_sensor": 42.0})


    register(SourceSpec(name="standin", description="a stand-in source for the registry test",
                        build=lambda options: StandinSource(options.get("standin_watts", 1.0)),
                        options=(SourceOption("standin_watts", parse_positive_float, "its power"),)))
''')


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A directory holding the stand-in module and the distribution metadata that declares its
    entry point, as `pip install` would leave them in site-packages."""
    return install_source_plugin(tmp_path / "site", "soakd_standin_source", STANDIN, "standin")


@pytest.mark.slow
def test_a_stand_in_source_module_shows_in_metrics_and_status(tmp_path: Path, plugin_path: Path) -> None:
    env = {"PYTHONPATH": str(plugin_path)}
    config = write_config(tmp_path / "soakd.toml", extra="standin_watts = 7.5", run_at_start=False)
    process = Daemon(tmp_path / "state", config, env=env)
    try:
        process.wait_ready()
        process.wait_for("soakd_source_up", 1, source="standin")
        process.wait_for("soakd_energy_joules_total", 7.5, source="standin", component="standin_rail")
        assert process.value("soakd_temperature_celsius", source="standin", sensor="standin_sensor") == 42.0
        assert process.value("soakd_power_watts", source="standin", component="standin_rail",
                             method="counter") == 7.5
        deadline = time.monotonic() + 30
        while True:
            status = subprocess.run(
                [sys.executable, "-m", "daemon.cli", "status", "--config", str(config), "--state-dir",
                 str(tmp_path / "state")], cwd=REPO, capture_output=True, text=True, check=False,
                env={**os.environ, **env})
            up = next((line for line in status.stdout.splitlines() if line.startswith("sources up:")), "")
            if "standin" in up or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert status.returncode == 0, status.stderr
        assert "standin" in up.split(":", 1)[1].replace(",", " ").split(), status.stdout
    finally:
        process.stop()
    # the whole-system energy plan counts the new rail beside the replayed Apple components
    with sqlite3.connect(tmp_path / "state" / "journal.sqlite3") as db:
        plans = [json.loads(d) for (d,) in db.execute("SELECT detail FROM events WHERE kind = 'energy_plan'")]
    assert plans and "standin_rail" in plans[-1]["counted"] and "combined" in plans[-1]["counted"]
