"""Telemetry sources: one module per source, each a pure parser plus a thin reader.

Importing this package imports every module in it, and every module a `soakd.sources` entry
point names (a plugin installed beside soakd); each source module registers itself
(daemon/sources/registry.py). So a new source is one module plus its test.

| module            | source name(s)                                | what                          |
|-------------------|-----------------------------------------------|-------------------------------|
| powermetrics      | `powermetrics`                                | macOS energy/power/thermal    |
| powermetrics_plist| (parser only)                                 | plist output of powermetrics  |
| powermetrics_text | (parser only)                                 | text logs of powermetrics     |
| replay            | `replay`                                      | recorded powermetrics, demos  |
| thermal_macos     | `thermal_notify`, `thermal_state`, `pmset`    | macOS thermal without root    |
| nvml              | `nvml`                                        | NVIDIA GPUs                   |
| rapl              | `rapl`                                        | Linux CPU package/DRAM energy |
| sysfs_thermal     | `sysfs_thermal`                               | Linux temperatures            |
| memory            | `memory`                                      | RSS, system, swap, torch      |
| counters          | (helper)                                      | counter wrap vs reset         |
| registry          | (the registry)                                | SourceSpec, register, options |

A plugin that fails to import is registered as a source that is always down, with the import
error as its reason, so it shows in `soakd_source_up` and `soakd status` instead of crashing.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib import metadata

from daemon.sources.base import (
    DeviceStatus,
    HardwareErrorEvent,
    NullSource,
    Reading,
    ReadingIssue,
    Source,
    SourceError,
    SourceUnavailable,
    label_value,
)
from daemon.sources.registry import SourceSpec, register

ENTRY_POINT_GROUP = "soakd.sources"
log = logging.getLogger(__name__)

__all__ = ["DeviceStatus", "HardwareErrorEvent", "NullSource", "Reading", "ReadingIssue", "Source",
           "SourceError", "SourceUnavailable", "label_value"]


def _broken_plugin(name: str, error: str) -> None:
    reason = f"unavailable: plugin {name!r} failed to import: {error}"
    log.warning("%s", reason)
    register(SourceSpec(name=label_value(name), build=lambda _o: NullSource(label_value(name), reason),
                        description=f"plugin {name} (failed to import)"))


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # a broken plugin is a down source, never a crash
            _broken_plugin(entry.name, f"{type(exc).__name__}: {exc}")


_discover()
