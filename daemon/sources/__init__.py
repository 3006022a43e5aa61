"""Telemetry sources: one module per source, each a pure parser plus a thin reader.

| module            | source name(s)                                | what                          |
|-------------------|-----------------------------------------------|-------------------------------|
| powermetrics      | `powermetrics`                                | macOS energy/power/thermal    |
| powermetrics_text | (parser only)                                 | text logs of powermetrics     |
| replay            | `replay`                                      | recorded powermetrics, demos  |
| thermal_macos     | `thermal_notify`, `thermal_state`, `pmset`    | macOS thermal without root    |
| nvml              | `nvml`                                        | NVIDIA GPUs                   |
| rapl              | `rapl`                                        | Linux CPU package/DRAM energy |
| sysfs_thermal     | `sysfs_thermal`                               | Linux temperatures            |
| memory            | `memory`                                      | RSS, system, swap, torch      |
"""

from daemon.sources.base import (
    NullSource,
    Reading,
    Source,
    SourceError,
    SourceUnavailable,
    label_value,
)

__all__ = ["NullSource", "Reading", "Source", "SourceError", "SourceUnavailable", "label_value"]
