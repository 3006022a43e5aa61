"""The registry of telemetry sources, filled as their modules are imported.

Each source module ends with one `register(SourceSpec(...))` per source it defines: its name,
the platforms where it is on by default, its `[sources]` config options with their parsers,
how to build it from those options and, for energy sources, which of its components contain
others (daemon/energy.py). Importing `daemon.sources` imports every module of the package
and every module named by a `soakd.sources` entry point (a plugin installed beside soakd), so
a new source is one module plus its test: the sampler's `default_sources`, config's
`[sources]` keys, the energy totals, `/metrics` and `soakd status` all read this registry.

Config keys: every source has an on/off switch named after it (`nvml = false`), plus the
options it declares (`rapl_root = "/sys/class/powercap"`). An option parser takes the raw
TOML or environment value and returns the parsed one, raising ValueError with the reason.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from daemon.sources.base import Source

EnergyParts = Callable[[Collection[str]], dict[str, str]]


class RegistryError(Exception):
    """Two sources claim the same name or config key."""


@dataclass(frozen=True)
class SourceOption:
    """One `[sources]` config key a source takes: `parse(raw) -> value`, raising ValueError."""

    key: str
    parse: Callable[[Any], Any]
    help: str


@dataclass(frozen=True)
class SourceSpec:
    """How a telemetry source is found, configured and built.

    - `name`: the source's name (label `source`, the on/off config key).
    - `build(options) -> Source`: options are the parsed `[sources]` table (all keys, so a
      source may read a shared one).
    - `platforms`: `sys.platform` prefixes where it is on by default; empty: everywhere.
    - `default_on`: False for sources that are only on when asked for.
    - `enabled_by`: an option key that switches the source on wherever it is set
      (`replay_file`, `thermal_root`).
    - `order`: the sampler reads sources in this order; the first one that reports a thermal
      pressure level is the one used, so the best thermal source has the lowest number.
    - `energy_parts(components) -> {part: total}`: given the energy component names present on
      this machine, which of them are contained in which other (daemon/energy.py).
    """

    name: str
    build: Callable[[Mapping[str, Any]], Source]
    description: str
    platforms: tuple[str, ...] = ()
    default_on: bool = True
    enabled_by: str | None = None
    options: tuple[SourceOption, ...] = ()
    order: int = 100
    energy_parts: EnergyParts | None = None

    def enabled(self, options: Mapping[str, Any], platform: str | None = None) -> bool:
        """Whether the source is used with these `[sources]` options on `platform`.

        The source's own switch (`options[name]`) wins; then `enabled_by`; then the default:
        `default_on` on one of `platforms` (or anywhere when there are none).
        """
        switch = options.get(self.name)
        if switch is not None:
            return bool(switch)
        if self.enabled_by is not None and options.get(self.enabled_by):
            return True
        here = platform or sys.platform
        return self.default_on and (not self.platforms or here.startswith(self.platforms))


_SPECS: dict[str, SourceSpec] = {}


def register(spec: SourceSpec) -> SourceSpec:
    """Add a source to the registry (at its module's import). Re-registering the same module's
    spec (a reload) replaces it; a name or option key already taken by another source raises
    RegistryError."""
    taken = option_parsers(exclude=spec.name)
    if spec.name in taken:
        raise RegistryError(f"source name {spec.name!r} is already a [sources] option")
    for option in spec.options:
        if option.key in taken or option.key in _SPECS or option.key == spec.name:
            raise RegistryError(f"[sources] option {option.key!r} of {spec.name!r} is taken")
    previous = _SPECS.get(spec.name)
    if previous is not None and _module(previous) != _module(spec):
        raise RegistryError(f"two telemetry sources are named {spec.name!r} "
                            f"({_module(previous)} and {_module(spec)})")
    _SPECS[spec.name] = spec
    return spec


def _module(spec: SourceSpec) -> str:
    return str(getattr(spec.build, "__module__", ""))


def specs() -> list[SourceSpec]:
    """Every registered source, in sampling order (order, then name)."""
    return sorted(_SPECS.values(), key=lambda s: (s.order, s.name))


def get(name: str) -> SourceSpec:
    """The spec of source `name`; KeyError when no such source is registered."""
    return _SPECS[name]


def option_parsers(exclude: str | None = None) -> dict[str, Callable[[Any], Any]]:
    """Every `[sources]` key -> its parser: each source's on/off switch and its options."""
    out: dict[str, Callable[[Any], Any]] = {}
    for spec in _SPECS.values():
        if spec.name == exclude:
            continue
        out[spec.name] = parse_bool
        out.update({option.key: option.parse for option in spec.options})
    return out


def build_sources(options: Mapping[str, Any] | None = None,
                  platform: str | None = None) -> list[Source]:
    """The enabled sources for these parsed `[sources]` options, in sampling order."""
    chosen = options or {}
    return [spec.build(chosen) for spec in specs() if spec.enabled(chosen, platform)]


# --- option parsers (raise ValueError with the reason; config turns it into ConfigError) ---


def parse_bool(value: Any) -> bool:
    """true/false, or the strings 1/0, yes/no, on/off (environment variables); raises
    ValueError for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def parse_str(value: Any) -> str:
    """A non-empty string, stripped; raises ValueError for an empty or non-string value."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value.strip()


def parse_positive_int(value: Any) -> int:
    """An integer >= 1 (a string of one is accepted, for environment variables); raises
    ValueError for anything else (a bool included)."""
    if isinstance(value, bool):
        raise ValueError("expected an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("expected an integer") from None
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def parse_positive_float(value: Any) -> float:
    """A finite number > 0 (a string of one is accepted, for environment variables); raises
    ValueError for anything else (a bool included)."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number") from None
    if not 0 < number < float("inf"):
        raise ValueError("must be a positive number")
    return number
