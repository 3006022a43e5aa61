"""Config: defaults, file, environment, flags; one-line errors naming the key; CI switches."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import DEFAULT_PORT, ConfigError, heavy_skip_reason, load_config


def test_defaults_run_with_no_file(tmp_path: Path) -> None:
    config = load_config(environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert config.listen == f"127.0.0.1:{DEFAULT_PORT}"
    assert config.profile == "heavy" and config.interval_seconds == 3600
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


@pytest.mark.parametrize("text, key", [
    ("[schedule]\ninterval_minutes = 0\n", "schedule.interval_minutes"),
    ("[schedule]\ncron = 'every hour'\n", "schedule.cron"),
    ("[workload]\nbackends = 'tpu'\n", "workload.backends"),
    ("[workload]\nprecisions = ['fp8']\n", "workload.precisions"),
    ("[workload.overrides]\n'conv.size' = -1\n", "workload.overrides.conv.size"),
    ("[workload.overrides]\n'matmul.q' = 1\n", "workload.overrides.matmul.q"),
    ("[daemon]\nlisten = '127.0.0.1:70000'\n", "daemon.listen"),
    ("[sources]\nnvml = 'maybe'\n", "sources.nvml"),
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
