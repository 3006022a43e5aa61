"""Configuration: built-in defaults < TOML file < SOAKD_* environment < command-line flags.

Every bad value is reported as one line naming the key and the value; `soakd run` turns that
into exit code 78 (EX_CONFIG) so launchd/systemd do not restart-loop on a permanent error.
Every number has a range (`RANGES`, and the workload overrides' `OVERRIDE_RANGES` in
workloads/phases.py), checked when the config is loaded and when SIGHUP reloads it: a value
that parses but would break the daemon later (a 1e12 s interval, a 70-bit seed) is refused
here. README's configuration section lists the ranges (a test keeps them equal).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from daemon.clitools import comma_list, device_indices
from daemon.paths import default_config_path, default_state_dir
from workloads.micro import MICRO_PROFILES
from workloads.phases import MODES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# Outside 9100-9999, which Prometheus' default port allocations list has used up.
DEFAULT_PORT = 10466
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
HEAVY_PROFILES = frozenset({"heavy", "reduced"})


class ConfigError(Exception):
    """One bad setting: `key`, the offending `value` and why."""

    def __init__(self, key: str, value: Any, why: str) -> None:
        super().__init__(f"{key} = {value!r}: {why}")
        self.key = key
        self.value = value


@dataclass(frozen=True)
class Config:
    """The daemon's settings: defaults, then the TOML file, then SOAKD_* environment, then flags
    (`load_config()`). Frozen: a reload builds a new one. Units are in the field names.
    """
    listen_host: str = "127.0.0.1"
    listen_port: int = DEFAULT_PORT
    state_dir: Path = field(default_factory=default_state_dir)
    log_format: str = "auto"  # auto: console on a terminal, JSON lines otherwise
    log_level: str = "info"
    profile: str = "auto"  # heavy where an accelerator runs, cpu elsewhere (daemon/autoprofile.py)
    profile_overrides: dict[str, Any] = field(default_factory=dict)
    interval_seconds: float = 3600.0
    cron: str | None = None
    jitter_seconds: float = 0.0
    run_at_start: bool = True
    misfire_grace_seconds: float = 3600.0
    http_idle_timeout_seconds: float = 60.0  # an idle HTTP connection is closed after this
    http_max_connections: int = 256  # open HTTP connections at most; more wait in the backlog
    backends: str = "auto"
    phases: tuple[str, ...] = ("matmul", "conv", "attention")
    precisions: tuple[str, ...] = ("auto",)  # fp16 when a Core ML backend is compared
    mode: str = "alternate"
    cpu_baseline: str = "cached"  # cached | before | off (workloads/baseline.py)
    worker_max_age_seconds: float = 0.0  # replace a worker this old (0: never)
    worker_max_memory_growth: float = 2.0  # replace a worker whose memory grew past this x (0: never)
    prepare_ahead: bool = True
    attention_variants: dict[str, str] = field(default_factory=dict)  # backend -> standard | ane
    devices: tuple[str, ...] | None = None  # device indices of a multi-device backend; None: all
    seed: int = 0
    sampler_interval_seconds: float = 1.0
    sources: dict[str, Any] = field(default_factory=dict)
    micro_profile: str = "light"
    micro_backends: str = "auto"
    # verdicts (daemon/verdicts.py) and the cool start (daemon/conditions.py)
    pass_mark: float = 0.97
    slowdown_threshold: float = 0.05
    history_rotations: int = 20
    outlier_ratio: float = 0.95
    cooldown_max_wait_seconds: float = 0.0  # 0: no cool-down
    cooldown_margin_celsius: float = 5.0
    cooldown_idle_celsius: float | None = None  # None: measured when the daemon starts
    source_path: Path | None = None

    @property
    def listen(self) -> str:
        """`host:port` the HTTP server binds (/metrics, /healthz)."""
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def journal_path(self) -> Path:
        """The SQLite journal inside `state_dir`."""
        return self.state_dir / "journal.sqlite3"


# key in the file/env -> (Config field, parser)
def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, value, "expected a non-empty string")
    return value.strip()


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(key, value, "expected a number")
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(key, value, "expected a number") from None


def _fmt(number: float) -> str:
    return f"{number:,.10g}".replace(",", "_") if number >= 10_000 else f"{number:g}"


def _in_range(key: str, value: Any, number: float) -> None:
    low, high, unit = RANGES[key]
    if not low <= number <= high:  # also refuses NaN
        raise ConfigError(key, value, f"must be between {_fmt(low)} and {_fmt(high)}{unit}")


def _number(key: str, value: Any) -> float:
    """A number within `RANGES[key]`."""
    number = _float(key, value)
    _in_range(key, value, number)
    return number


def _whole(key: str, value: Any) -> int:
    """An integer within `RANGES[key]` (an integral float such as 5.0 is accepted)."""
    number = _float(key, value)
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            raise ConfigError(key, value, "expected an integer") from None
    elif isinstance(value, float) and not number.is_integer():
        raise ConfigError(key, value, "expected an integer")
    _in_range(key, value, number)
    return int(value) if isinstance(value, int) else int(number)


def _bool(key: str, value: Any) -> bool:
    from daemon.sources.registry import parse_bool  # one parser for [sources] switches and the rest

    try:
        return parse_bool(value)
    except ValueError as exc:
        raise ConfigError(key, value, str(exc)) from None


def _list(key: str, value: Any, what: str = "item", allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    try:
        return tuple(comma_list(value, what, allowed))
    except ValueError as exc:
        raise ConfigError(key, value, str(exc)) from None


def _choice(options: tuple[str, ...]) -> Any:
    def parse(key: str, value: Any) -> str:
        text = _str(key, value)
        if text not in options:
            raise ConfigError(key, value, f"expected one of {', '.join(options)}")
        return text
    return parse


def _listen(key: str, value: Any) -> tuple[str, int]:
    text = _str(key, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(key, value, "expected HOST:PORT, e.g. 127.0.0.1:10466")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(key, value, "port is not a number") from None
    if not 0 <= number <= 65535:
        raise ConfigError(key, value, "port must be 0-65535")
    return host.strip("[]"), number


def _path(key: str, value: Any) -> Path:
    return Path(_str(key, value)).expanduser()


def _cron(key: str, value: Any) -> str:
    from apscheduler.triggers.cron import CronTrigger

    text = _str(key, value)
    try:
        CronTrigger.from_crontab(text)
    except ValueError as exc:
        raise ConfigError(key, value, f"not a crontab expression ({exc})") from None
    return text


def _profile(key: str, value: Any) -> str:
    from workloads.phases import AUTO_PROFILE, PROFILES

    return str(_choice((AUTO_PROFILE, *PROFILES))(key, value))


def _phases(key: str, value: Any) -> tuple[str, ...]:
    from workloads.phases import PHASE_NAMES

    return _list(key, value, "phase", PHASE_NAMES)


def _precisions(key: str, value: Any) -> tuple[str, ...]:
    from workloads.backends import PRECISIONS

    return _list(key, value, "precision", (*PRECISIONS, "auto"))


def _backends(key: str, value: Any) -> str:
    """Backend names or `auto`, checked by the one parser `soakd once` uses too (built-in names,
    and the stand-ins the SOAKD_EXTRA_BACKENDS test hook names)."""
    from workloads.backends import parse_backends

    names = ",".join(_list(key, value, "backend"))
    try:
        parse_backends(names)
    except ValueError as exc:
        raise ConfigError(key, value, str(exc)) from None
    return names


def _variants(key: str, value: Any) -> dict[str, str]:
    """A table backend = variant, e.g. {mps = "ane"}: which attention layout each backend runs
    (unlisted backends: their default, `ane` on coreml-ane, else `standard`)."""
    from workloads.backends import BACKEND_NAMES
    from workloads.phases import ATTENTION_VARIANTS

    if not isinstance(value, Mapping):
        raise ConfigError(key, value, "expected a table of backend = variant")
    for backend, variant in value.items():
        if backend not in BACKEND_NAMES:
            raise ConfigError(f"{key}.{backend}", variant, f"unknown backend (choose from {', '.join(BACKEND_NAMES)})")
        if variant not in ATTENTION_VARIANTS:
            raise ConfigError(f"{key}.{backend}", variant, f"expected one of {', '.join(ATTENTION_VARIANTS)}")
    return {str(k): str(v) for k, v in value.items()}


def _devices(key: str, value: Any) -> tuple[str, ...] | None:
    """`all` (every visible device) or device indices: a list [0, 1] or a comma list "0,1"."""
    try:
        return device_indices(value)
    except ValueError as exc:
        raise ConfigError(key, value, str(exc)) from None


def _baseline_policy(key: str, value: Any) -> str:
    """`cached`, `before` or `off` (true/false kept for old configs: cached / off)."""
    from workloads.baseline import POLICIES

    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
        return "cached" if _bool(key, value) else "off"
    return str(_choice(POLICIES)(key, value))


# dotted key -> (lowest, highest, unit): every number a config can hold, and README's table.
RANGES: dict[str, tuple[float, float, str]] = {
    "daemon.idle_timeout_seconds": (1, 3600, " s"),
    "daemon.max_connections": (4, 4096, ""),
    "schedule.interval_minutes": (1, 44_640, " min"),  # 1 minute to 31 days
    "schedule.interval_seconds": (60, 2_678_400, " s"),
    "schedule.jitter_seconds": (0, 3600, " s"),  # and at most half the interval
    "schedule.misfire_grace_seconds": (1, 86_400, " s"),
    "workload.seed": (0, 2**32 - 1, ""),  # what numpy, torch and Core ML all take
    "workload.worker_max_age_seconds": (0, 604_800, " s"),  # 0: never; up to a week
    "workload.worker_max_memory_growth": (0, 100, ""),  # 0: never; else a multiple like 2
    "sampler.interval_seconds": (0.2, 60, " s"),
    "sources.powermetrics_interval_ms": (100, 60_000, " ms"),
    "verdicts.pass_mark": (0.5, 1, ""),
    "verdicts.slowdown_threshold": (0.01, 0.5, ""),
    "verdicts.history_rotations": (5, 1000, ""),
    "verdicts.outlier_ratio": (0.5, 1, ""),
    "cooldown.max_wait_seconds": (0, 7200, " s"),  # 0: no cool-down
    "cooldown.margin_celsius": (0.5, 50, " °C"),
    "cooldown.idle_celsius": (0, 110, " °C"),
}

# (section, key) -> (Config field, parser). Sections are the TOML tables.
SETTINGS: dict[tuple[str, str], tuple[str, Any]] = {
    ("daemon", "listen"): ("listen", _listen),
    ("daemon", "state_dir"): ("state_dir", _path),
    ("daemon", "log_format"): ("log_format", _choice(("auto", "json", "console"))),
    ("daemon", "log_level"): ("log_level", _choice(("debug", "info", "warning", "error"))),
    ("daemon", "idle_timeout_seconds"): ("http_idle_timeout_seconds", _number),
    ("daemon", "max_connections"): ("http_max_connections", _whole),
    ("schedule", "profile"): ("profile", _profile),
    ("schedule", "interval_minutes"): ("interval_seconds", lambda k, v: 60.0 * _number(k, v)),
    ("schedule", "interval_seconds"): ("interval_seconds", _number),
    ("schedule", "cron"): ("cron", _cron),
    ("schedule", "jitter_seconds"): ("jitter_seconds", _number),
    ("schedule", "run_at_start"): ("run_at_start", _bool),
    ("schedule", "misfire_grace_seconds"): ("misfire_grace_seconds", _number),
    ("workload", "backends"): ("backends", _backends),
    ("workload", "phases"): ("phases", _phases),
    ("workload", "precisions"): ("precisions", _precisions),
    ("workload", "mode"): ("mode", _choice(MODES)),
    ("workload", "cpu_baseline"): ("cpu_baseline", _baseline_policy),
    ("workload", "worker_max_age_seconds"): ("worker_max_age_seconds", _number),
    ("workload", "worker_max_memory_growth"): ("worker_max_memory_growth", _number),
    ("workload", "prepare_ahead"): ("prepare_ahead", _bool),
    ("workload", "attention_variants"): ("attention_variants", _variants),
    ("workload", "devices"): ("devices", _devices),
    ("workload", "seed"): ("seed", _whole),
    ("sampler", "interval_seconds"): ("sampler_interval_seconds", _number),
    ("micro", "profile"): ("micro_profile", _choice(tuple(MICRO_PROFILES))),
    ("micro", "backends"): ("micro_backends", _backends),
    ("verdicts", "pass_mark"): ("pass_mark", _number),
    ("verdicts", "slowdown_threshold"): ("slowdown_threshold", _number),
    ("verdicts", "history_rotations"): ("history_rotations", _whole),
    ("verdicts", "outlier_ratio"): ("outlier_ratio", _number),
    ("cooldown", "max_wait_seconds"): ("cooldown_max_wait_seconds", _number),
    ("cooldown", "margin_celsius"): ("cooldown_margin_celsius", _number),
    ("cooldown", "idle_celsius"): ("cooldown_idle_celsius", _number),
}


def source_keys() -> dict[str, Any]:
    """The [sources] keys, from the telemetry source registry (daemon/sources/registry.py):
    each source's on/off switch and the options it declares, key -> parser(raw) (raises
    ValueError with the reason)."""
    from daemon.sources.registry import option_parsers

    return option_parsers()


def _source_setting(dotted: str, key: str, value: Any) -> Any:
    parsers = source_keys()
    if key not in parsers:
        raise ConfigError(dotted, value, f"unknown setting (known: {', '.join(sorted(parsers))})")
    try:
        parsed = parsers[key](value)
    except ValueError as exc:
        raise ConfigError(dotted, value, str(exc)) from None
    if dotted in RANGES:
        _in_range(dotted, value, float(parsed))
    return parsed


def _apply(config: Config, section: str, key: str, value: Any) -> Config:
    dotted = f"{section}.{key}"
    if section == "sources":
        return replace(config, sources={**config.sources, key: _source_setting(dotted, key, value)})
    if section == "workload" and key == "overrides":
        if not isinstance(value, Mapping):
            raise ConfigError(dotted, value, "expected a table of setting = value")
        return replace(config, profile_overrides={**config.profile_overrides, **value})
    if (section, key) not in SETTINGS:
        known = [*sorted(f"{s}.{k}" for s, k in SETTINGS), "sources.*", "workload.overrides.*"]
        raise ConfigError(dotted, value, f"unknown setting (known: {', '.join(known)})")
    name, parse = SETTINGS[(section, key)]
    parsed = parse(dotted, value)
    if name == "listen":
        return replace(config, listen_host=parsed[0], listen_port=parsed[1])
    return replace(config, **{name: parsed})


def _apply_table(config: Config, table: Mapping[str, Any]) -> Config:
    for section, body in table.items():
        if not isinstance(body, Mapping):
            raise ConfigError(section, body, "expected a [section] table")
        for key, value in body.items():
            config = _apply(config, section, key, value)
    return config


def _env_settings(environ: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """SOAKD_<SECTION>_<KEY>=value, e.g. SOAKD_SCHEDULE_PROFILE=ci or SOAKD_DAEMON_LISTEN=..."""
    out = []
    sections = {s for s, _ in SETTINGS} | {"sources"}
    for name, value in environ.items():
        if not name.startswith("SOAKD_"):
            continue
        rest = name[len("SOAKD_"):].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            out.append((section, key, value))
    return out


def validate(config: Config) -> Config:
    """Cross-field checks: jitter within half the interval; the workload overrides must apply to
    the chosen profile (and stay within `OVERRIDE_RANGES`)."""
    from workloads.phases import get_profile

    if config.cron is None and config.jitter_seconds > config.interval_seconds / 2:
        raise ConfigError("schedule.jitter_seconds", config.jitter_seconds,
                          f"must be at most half the interval ({_fmt(config.interval_seconds / 2)} s)")
    try:
        for name in ("heavy", "cpu") if config.profile == "auto" else (config.profile,):
            get_profile(name, config.profile_overrides)
    except (KeyError, ValueError) as exc:
        message = str(exc).strip("'\"")
        key, _, why = message.partition(": ")
        raise ConfigError(f"workload.overrides.{key}", config.profile_overrides.get(key), why or message) from None
    return config


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the file (`path`, else the default location if it exists), env, flags."""
    environ = os.environ if environ is None else environ
    config = Config()
    explicit = path is not None or "SOAKD_CONFIG" in environ
    file = path or (Path(environ["SOAKD_CONFIG"]) if "SOAKD_CONFIG" in environ else default_config_path())
    if explicit or file.exists():
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", str(file), "file not found") from None
        except OSError as exc:
            raise ConfigError("--config", str(file), f"cannot read ({exc.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("--config", str(file), f"not valid TOML ({exc})") from None
        config = replace(_apply_table(config, data), source_path=file)
    for section, key, value in _env_settings(environ):
        config = _apply(config, section, key, value)
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, _, key = dotted.partition(".")
            config = _apply(config, section, key, value)
    return validate(config)


def heavy_skip_reason(profile: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The seed's CI switches: under CI=true heavy runs are skipped unless SOAKD_HEAVY_BENCHMARK=1;
    SOAKD_SKIP_HEAVY_BENCHMARK=1 always skips them."""
    environ = os.environ if environ is None else environ
    if profile not in HEAVY_PROFILES:
        return None
    if environ.get("SOAKD_SKIP_HEAVY_BENCHMARK", "") not in ("", "0"):
        return f"SOAKD_SKIP_HEAVY_BENCHMARK is set: the {profile} profile is skipped"
    ci = environ.get("CI", "").lower() in ("1", "true", "yes")
    if ci and environ.get("SOAKD_HEAVY_BENCHMARK", "") in ("", "0"):
        return f"CI=true: the {profile} profile is skipped unless SOAKD_HEAVY_BENCHMARK=1"
    return None
