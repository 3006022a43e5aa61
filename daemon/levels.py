"""One thermal-pressure scale for every source.

macOS reports thermal state in four different vocabularies; soakd maps all of them onto the
kernel's own pressure scale (OSThermalPressureLevel), which is also what `powermetrics -s
thermal` prints. Canonical names are lowercase and safe as Prometheus label values.

| # | level      | powermetrics | notify mac | notify iOS | thermalState | pmset (Intel)         |
|---|------------|--------------|------------|------------|--------------|-----------------------|
| 0 | `nominal`  | Nominal      | 0          | 0          | nominal (0)  | limit 100, warn 0     |
| 1 | `light`    | Light        | -          | 10         | -            | -                     |
| 2 | `moderate` | Moderate     | 1          | 20         | fair (1)     | limit 80-99           |
| 3 | `heavy`    | Heavy        | 2          | 30         | serious (2)  | limit 50-79, warn 5/100 |
| 4 | `trapping` | Trapping     | 3          | 40         | critical (3) | limit <50, warn 10/110 |
| 5 | `sleeping` | Sleeping     | 4          | 50         | -            | -                     |

("limit" is pmset's CPU_Speed_Limit in percent, "warn" its thermal warning level.)

Notes on the mappings:
- notify: `com.apple.system.thermalpressurelevel` carries OSThermalPressureLevel. The macOS SDK
  header (libkern/OSThermalNotification.h) numbers it 0..4 (no Light); the iOS branch of the
  same header uses 0/10/20/30/40/50. The two ranges do not overlap, so both are accepted.
- NSProcessInfo.thermalState is a coarser, app-facing scale (nominal/fair/serious/critical); it
  lags and compresses the kernel levels (macmade/Hot #118 shows "Fair" while powermetrics said
  "heavy"). fair -> moderate, serious -> heavy, critical -> trapping is soakd's choice, based on
  Apple's descriptions (serious: "system performance may be impacted"; critical: "needs to cool
  down").
- pmset `-g therm` (Intel Macs) has no pressure level. `CPU_Speed_Limit` (percent of nominal
  clock the CPU may use) and the IOPM thermal warning level (IOPM.h: Normal 0, Danger 5,
  Critical 10, Warning 100 = kIOPMThermalWarningLevelDanger, Trap 110) are mapped with the
  thresholds above. Those thresholds are a heuristic, not Apple's: treat that level as estimated.
"""

from __future__ import annotations

import re

LEVELS: tuple[str, ...] = ("nominal", "light", "moderate", "heavy", "trapping", "sleeping")
ORDINALS: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}
UNKNOWN = "unknown"

_NOTIFY_MACOS = {0: "nominal", 1: "moderate", 2: "heavy", 3: "trapping", 4: "sleeping"}
_NOTIFY_IOS = {10: "light", 20: "moderate", 30: "heavy", 40: "trapping", 50: "sleeping"}
_THERMAL_STATE = {"nominal": "nominal", "fair": "moderate", "serious": "heavy",
                  "critical": "trapping"}
_THERMAL_STATE_BY_VALUE = ("nominal", "fair", "serious", "critical")
# IOPM.h thermal levels; 255 is kIOPMThermalLevelUnknown and falls through to None.
_IOPM_WARNING = {0: "nominal", 5: "heavy", 100: "heavy", 10: "trapping", 110: "trapping"}


def level_ordinal(level: str | None) -> int | None:
    """Position of a canonical level on the scale (0 = nominal), None for unknown levels."""
    if level is None:
        return None
    return ORDINALS.get(level)


def _opaque(text: str) -> str:
    """An unrecognised level kept as a label-safe lowercase token."""
    token = re.sub(r"[^a-z0-9_]+", "_", text.strip().lower()).strip("_")
    return token[:32] or UNKNOWN


def from_powermetrics(text: str | None) -> str | None:
    """powermetrics' `thermal_pressure` / "Current pressure level:" string.

    Unknown strings are kept as opaque lowercase tokens (FORMAT.md: treat them as opaque),
    so a new level shows up in metrics rather than disappearing.
    """
    if text is None or not text.strip():
        return None
    name = text.strip().lower()
    return name if name in ORDINALS else _opaque(name)


def from_notify_value(value: int) -> str:
    """The `com.apple.system.thermalpressurelevel` notify state (macOS 0..4 or iOS 0..50)."""
    if value in _NOTIFY_MACOS:
        return _NOTIFY_MACOS[value]
    return _NOTIFY_IOS.get(value, UNKNOWN)


def from_thermal_state(state: int | str) -> str:
    """NSProcessInfo.thermalState, as its raw value (0..3) or its name."""
    if isinstance(state, int):
        if 0 <= state < len(_THERMAL_STATE_BY_VALUE):
            return _THERMAL_STATE[_THERMAL_STATE_BY_VALUE[state]]
        return UNKNOWN
    return _THERMAL_STATE.get(state.strip().lower(), UNKNOWN)


def from_pmset(speed_limit: int | None, warning_level: int | None = None) -> str | None:
    """pmset's CPU_Speed_Limit (percent) and thermal warning level, the more severe of the two.

    None when pmset recorded neither (Apple Silicon prints only "No ... has been recorded").
    """
    candidates: list[str] = []
    if speed_limit is not None:
        if speed_limit >= 100:
            candidates.append("nominal")
        elif speed_limit >= 80:
            candidates.append("moderate")
        elif speed_limit >= 50:
            candidates.append("heavy")
        else:
            candidates.append("trapping")
    if warning_level is not None and warning_level in _IOPM_WARNING:
        candidates.append(_IOPM_WARNING[warning_level])
    if not candidates:
        return None
    return max(candidates, key=lambda name: ORDINALS[name])
