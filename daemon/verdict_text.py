"""The verdicts and run conditions in words, for `soakd status`, `soakd history` and the report.

Each function takes a journal row as the journal returns it (a dict, JSON columns decoded):
a `verdicts` row (daemon/records.VerdictRow), a `conditions` row (ConditionsRow) or the
detail of a `slowdown` event (daemon/verdicts.Slowdown.to_dict plus the series' labels).
Standard library only: `soakd status` must start fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def rate(value: float | None) -> str:
    """FLOP/s with 3 significant digits and an SI prefix ("1.23 TFLOP/s"); "-" for None."""
    if value is None:
        return "-"
    scale, prefix = _scale(value)
    return f"{value / scale:.3g} {prefix}FLOP/s"


def _scale(value: float) -> tuple[float, str]:
    return next(((s, p) for s, p in _PREFIXES if abs(value) >= s), (1.0, ""))


def loop_rates(values: Sequence[float]) -> str:
    """Loop throughputs in one unit, that of the largest: "408, 406, 319 MFLOP/s"; "-" for none."""
    if not values:
        return "-"
    scale, prefix = _scale(max(values))
    return ", ".join(f"{v / scale:.3g}" for v in values) + f" {prefix}FLOP/s"


def series_name(row: Mapping[str, Any]) -> str:
    """"matmul cuda bf16 device 0"."""
    return f"{row['phase']} {row['backend']} {row['precision']} device {row['device']}"


def stability_text(row: Mapping[str, Any]) -> str:
    """"stability 0.960 FAIL (pass mark 0.97, 5 loops)", or why there is none."""
    loops = len(row.get("loops") or [])
    if row.get("stability") is None:
        return f"stability - ({loops} loop{'s' if loops != 1 else ''}: needs two)"
    verdict = "pass" if row.get("passed") else "FAIL"
    return f"stability {row['stability']:.3f} {verdict} (pass mark {row['pass_mark']:g}, {loops} loops)"


def slowdowns_text(row: Mapping[str, Any]) -> str:
    """"no slowdown", "3 slowdowns (1 unexplained)"."""
    count, unexplained = int(row.get("slowdowns") or 0), int(row.get("unexplained_slowdowns") or 0)
    if not count:
        return "no slowdown"
    word = "slowdown" if count == 1 else "slowdowns"
    return f"{count} {word} ({unexplained} unexplained)" if unexplained else f"{count} {word} (all explained)"


def history_text(row: Mapping[str, Any]) -> str:
    """The sustained throughput against its history band, REGRESSION when below it."""
    text = f"sustained {rate(row.get('sustained_flop_per_second'))}"
    if row.get("history_low") is None:
        return text + " (no history band yet)"
    text += (f", history band {rate(row['history_low'])} - {rate(row['history_high'])} "
             f"(median {rate(row['history_median'])}, {row['history_rotations']} rotations)")
    return text + (": REGRESSION" if row.get("regression") else "")


def verdict_line(row: Mapping[str, Any]) -> str:
    """One series' verdicts on one line."""
    return f"{series_name(row)}: {stability_text(row)}; {slowdowns_text(row)}; {history_text(row)}"


def outlier_line(row: Mapping[str, Any]) -> str | None:
    """"outlier: matmul cuda bf16 device 2 at 0.91 of the host's median device" (None when the
    device is not an outlier, or the host has one device)."""
    if not row.get("device_outlier"):
        return None
    return f"outlier: {series_name(row)} at {row['device_relative']:.3f} of the host's median device"


def slowdown_line(detail: Mapping[str, Any]) -> str:
    """One slowdown event: which loop, how far below the warm level, and why (or that nothing
    in the telemetry changed)."""
    why = "; ".join(detail.get("explanations") or []) or "nothing in the telemetry changed"
    kind = "slowdown" if detail.get("explained") else "UNEXPLAINED slowdown"
    return (f"{kind}: {series_name(detail)} loop {int(detail['loop']) + 1}: {detail['drop']:.1%} below the warm "
            f"level ({rate(detail['flop_per_second'])} vs {rate(detail['warm_flop_per_second'])}): {why}")


def conditions_line(row: Mapping[str, Any]) -> str:
    """Power source, Low Power Mode, thermal level, other processes' CPU, the cool-down and
    whether the rotation started hot."""
    words = []
    if row.get("on_battery") is None:
        words.append("power source unknown (no battery)")
    else:
        percent = row.get("battery_percent")
        charge = f", {percent:.0f}%" if percent is not None else ""
        words.append(f"on battery{charge}" if row["on_battery"] else f"on AC{charge}")
    if row.get("low_power_mode") is not None:
        words.append("Low Power Mode ON" if row["low_power_mode"] else "Low Power Mode off")
    words.append(f"thermal {row.get('thermal_level') or 'unknown'}")
    if row.get("other_cpu_ratio") is not None:
        words.append(f"other processes {row['other_cpu_ratio']:.0%} CPU")
    state, seconds = row.get("cooldown") or "off", float(row.get("cooldown_seconds") or 0.0)
    words.append("no cool-down" if state == "off" else f"cool-down {state} after {seconds:.0f} s")
    words.append(_hot(row))
    return " · ".join(words)


def _hot(row: Mapping[str, Any]) -> str:
    if row.get("started_hot") is None:
        return "start temperature not judged (no idle temperature)"
    if not row["started_hot"]:
        return f"started cool (within {row['margin_celsius']:g} °C of idle)"
    temperatures, idle = row.get("temperatures") or {}, row.get("idle_temperatures") or {}
    hot = ", ".join(f"{name} {temperatures.get(name, 0):.0f} °C (idle {idle.get(name, 0):.0f})"
                    for name in row.get("hot_sensors") or [])
    return f"STARTED HOT: {hot}"


def rotation_verdict_lines(verdicts: Sequence[Mapping[str, Any]], slowdowns: Sequence[Mapping[str, Any]],
                           conditions: Mapping[str, Any] | None, indent: str = "  ") -> list[str]:
    """The block `soakd status` prints under a rotation: conditions, a line per series, the
    outliers, then each unexplained slowdown."""
    lines = [f"{indent}conditions: {conditions_line(conditions)}"] if conditions else []
    lines += [f"{indent}{verdict_line(row)}" for row in verdicts]
    lines += [f"{indent}{text}" for text in (outlier_line(row) for row in verdicts) if text]
    lines += [f"{indent}{slowdown_line(d)}" for d in slowdowns if not d.get("explained")]
    return lines
