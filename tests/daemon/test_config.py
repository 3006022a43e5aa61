"""Config: defaults, file, environment, flags; one-line errors naming the key; CI switches."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import DEFAULT_PORT, RANGES, ConfigError, heavy_skip_reason, load_config
from workloads.phases import OVERRIDE_RANGES, PROFILES, with_overrides


def test_defaults_run_with_no_file(tmp_path: Path) -> None:
    config = load_config(environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert config.listen == f"127.0.0.1:{DEFAULT_PORT}"
    assert config.profile == "auto" and config.interval_seconds == 3600
    assert config.source_path is None


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "soakd.toml"
    path.write_text('[schedule]\nprofile = "light"\ninterval_minutes = 5\n[daemon]\nlisten = "0.0.0.0:9999"\n'
                    '[workload.overrides]\n"matmul.n" = 256\n')
    config = load_config(path, environ={"SOAKD_SCHEDULE_PROFILE": "ci"},
                         flags={"daemon.listen": "127.0.0.2:1234", "schedule.profile": None})
    assert config.profile == "ci"  # env beats the file; a None flag changes nothing
    assert config.interval_seconds == 300
    assert (config.listen_host, config.listen_port) == ("127.0.0.2", 1234)
    assert config.profile_overrides == {"matmul.n": 256}
    assert config.source_path == path


REPORTED = [  # the fault-injection pass's cases: each parsed, then broke the daemon
    ("[schedule]\ninterval_seconds = 1e12\n", "schedule.interval_seconds"),
    ("[schedule]\njitter_seconds = 1e300\n", "schedule.jitter_seconds"),
    ("[schedule]\njitter_seconds = 1e12\n", "schedule.jitter_seconds"),
    ("[schedule]\nmisfire_grace_seconds = 1e300\n", "schedule.misfire_grace_seconds"),
    ("[workload.overrides]\nphase_seconds = 1e308\n", "workload.overrides.phase_seconds"),
    ("[workload.overrides]\nslice_seconds = 0\n", "workload.overrides.slice_seconds"),
    ("[sampler]\ninterval_seconds = 1e-9\n", "sampler.interval_seconds"),
    (f"[workload]\nseed = {2**70}\n", "workload.seed"),
]


@pytest.mark.parametrize("text, key", [
    ("[schedule]\ninterval_minutes = 0\n", "schedule.interval_minutes"),
    ("[schedule]\ncron = 'every hour'\n", "schedule.cron"),
    ("[workload]\nbackends = 'tpu'\n", "workload.backends"),
    ("[workload]\nprecisions = ['fp8']\n", "workload.precisions"),
    ("[workload.overrides]\n'conv.size' = -1\n", "workload.overrides.conv.size"),
    ("[workload.overrides]\n'matmul.q' = 1\n", "workload.overrides.matmul.q"),
    ("[daemon]\nlisten = '127.0.0.1:70000'\n", "daemon.listen"),
    ("[sources]\nnvml = 'maybe'\n", "sources.nvml"),
    # numbers out of range (issue 19 item 2)
    *REPORTED,
    ("[schedule]\ninterval_minutes = 1e10\n", "schedule.interval_minutes"),
    ("[schedule]\ninterval_seconds = nan\n", "schedule.interval_seconds"),
    ("[schedule]\ninterval_minutes = 60\njitter_seconds = 1801\n", "schedule.jitter_seconds"),
    ("[workload]\nseed = -1\n", "workload.seed"),
    ("[workload]\nseed = 1.5\n", "workload.seed"),
    ("[daemon]\nmax_connections = 1000000\n", "daemon.max_connections"),
    ("[daemon]\nidle_timeout_seconds = 0\n", "daemon.idle_timeout_seconds"),
    ("[sources]\npowermetrics_interval_ms = 1\n", "sources.powermetrics_interval_ms"),
    ("[workload.overrides]\nphase_seconds = 3600\nslice_seconds = 0.1\n", "workload.overrides.phase_seconds"),
    ("[workload.overrides]\n'matmul.n' = 1e9\n", "workload.overrides.matmul.n"),
    ("[workload.overrides]\n'conv.stage_layers' = '1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1'\n",
     "workload.overrides.conv.stage_layers"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "soakd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert str(error.value).startswith(key), str(error.value)
    assert "\n" not in str(error.value)


def test_bad_environment_value_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"schedule\.jitter_seconds"):
        load_config(environ={"SOAKD_SCHEDULE_JITTER_SECONDS": "soon", "XDG_CONFIG_HOME": "/nonexistent"})


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml", environ={})


def test_ci_switches_from_the_seed() -> None:
    assert heavy_skip_reason("heavy", {"CI": "true"}) is not None
    assert heavy_skip_reason("reduced", {"CI": "true"}) is not None
    assert heavy_skip_reason("heavy", {"CI": "true", "SOAKD_HEAVY_BENCHMARK": "1"}) is None
    assert heavy_skip_reason("heavy", {"SOAKD_SKIP_HEAVY_BENCHMARK": "1", "SOAKD_HEAVY_BENCHMARK": "1"})
    assert heavy_skip_reason("heavy", {}) is None
    assert heavy_skip_reason("ci", {"CI": "true", "SOAKD_SKIP_HEAVY_BENCHMARK": "1"}) is None


# --- ranges (issue 19 item 2) -------------------------------------------------------------------



def test_the_ends_of_every_range_are_accepted(tmp_path: Path) -> None:
    for key, (low, high, _) in RANGES.items():
        section, _, name = key.partition(".")
        for value in (low, high):
            number = int(value) if float(value).is_integer() else value
            extra = "\ninterval_seconds = 2678400" if key == "schedule.jitter_seconds" else ""
            path = tmp_path / "soakd.toml"
            path.write_text(f"[{section}]\n{name} = {number}{extra}\n")
            load_config(path, environ={})
    for key, (low, high) in OVERRIDE_RANGES.items():
        for value in (low, high):
            overrides = {key: int(value) if float(value).is_integer() else value}
            if key == "phase_seconds":
                overrides["slice_seconds"] = 3600
            if key.startswith("conv.stage"):
                overrides = {key: ",".join([str(int(value))] * 5)}
            if key == "attention.d_model":
                overrides["attention.heads"] = 1
            if key == "attention.heads":
                overrides["attention.d_model"] = int(value)
            with_overrides(PROFILES["ci"], overrides)


def test_the_readme_states_every_range() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `")]
    table = {line.split("`")[1]: line for line in rows}
    expected = {key: (low, high) for key, (low, high, _) in RANGES.items()}
    expected.update({f"workload.overrides.{key}": bounds for key, bounds in OVERRIDE_RANGES.items()})
    for key, (low, high) in expected.items():
        assert key in table, f"{key} is not in README's range table"
        cells = table[key].split("|")[2].replace(",", "")
        assert f"{low:.10g} – {high:.10g}" in cells, table[key]
