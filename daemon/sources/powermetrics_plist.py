"""macOS powermetrics output: the normalised sample and the plist stream parser (pure).

Format facts (tests/fixtures/powermetrics/FORMAT.md):
- `-f plist` prints one XML plist per sample, separated by a single NUL byte.
- `processor.*_energy` is mJ over the real window `elapsed_ns`; `*_power` is mW. Power is
  always computed here as energy / elapsed, never from `-i`.
- `gpu.freq_hz` is MHz despite its name; cluster `freq_hz` is Hz.
- Monterey (12) has `package_energy` / `dram_energy` and no `combined_power`; Ventura (13)+
  has `combined_power` (mW only, no energy key).
- Intel Macs report `processor.package_joules` (J) and `package_watts` (W) and no `*_energy`:
  that is component `package`; `processor.freq_hz` (Hz) is the CPU package frequency.
- With the gpu_power sampler alone there is no `processor` dict: energy is `gpu.gpu_energy`.

The text format parser lives in powermetrics_text.py and builds the same `PowermetricsSample`
through `build_sample`, so plist, text and replay share one normaliser. The live child is in
powermetrics.py.
"""

from __future__ import annotations

import math
import plistlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from daemon import levels
from daemon.sources.base import Reading, label_value

COMPONENTS: tuple[str, ...] = ("cpu", "gpu", "ane", "combined", "package", "dram")
DEFAULT_SAMPLERS: tuple[str, ...] = ("cpu_power", "gpu_power", "ane_power", "thermal")


class PowermetricsParseError(ValueError):
    """Input that is not powermetrics output (or is damaged beyond use)."""


@dataclass(frozen=True)
class PowermetricsSample:
    """One powermetrics sample in base units.

    `energy_joules[c]` is the energy component c used during the window; `power_watts[c]` the
    average power over it. Where the source gave energy (plist `*_energy`) power is derived
    as energy / elapsed; where it gave only average power (text `... Power: N mW`, plist
    `combined_power`) energy is derived as power x elapsed. Both are estimates by Apple's
    own account (`powermetrics -h`).
    """

    timestamp: datetime | None
    elapsed_seconds: float
    energy_joules: dict[str, float]
    power_watts: dict[str, float]
    thermal_pressure: str | None = None
    gpu_frequency_hz: float | None = None
    cluster_frequency_hz: dict[str, float] = field(default_factory=dict)
    hw_model: str | None = None
    os_build: str | None = None
    cpu_frequency_hz: float | None = None  # Intel plist `processor.freq_hz` (package, Hz)

    def to_json(self) -> dict[str, Any]:
        """The JSON object `soakd replay-powermetrics` prints for this sample."""
        return {
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "elapsed_seconds": self.elapsed_seconds,
            "power_watts": dict(self.power_watts),
            "energy_joules": dict(self.energy_joules),
            "thermal_pressure": self.thermal_pressure,
            "gpu_frequency_hz": self.gpu_frequency_hz,
            "cluster_frequency_hz": dict(self.cluster_frequency_hz),
            "hw_model": self.hw_model,
            "os_build": self.os_build,
            "cpu_frequency_hz": self.cpu_frequency_hz,
        }


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise PowermetricsParseError(f"{what} is not a finite non-negative number: {value!r}")
    return value


def build_sample(
    *,
    elapsed_seconds: float,
    timestamp: datetime | None = None,
    energy_joules: Mapping[str, float] | None = None,
    power_watts: Mapping[str, float] | None = None,
    thermal_pressure: str | None = None,
    gpu_frequency_hz: float | None = None,
    cluster_frequency_hz: Mapping[str, float] | None = None,
    hw_model: str | None = None,
    os_build: str | None = None,
    cpu_frequency_hz: float | None = None,
) -> PowermetricsSample:
    """The shared normaliser: fills in power from energy and energy from power.

    A component given as energy wins over the same component given as power, because the
    energy counter is what the power figure was computed from. Units: seconds, joules, watts,
    hertz. Raises PowermetricsParseError for an elapsed time of 0 or an energy, power or
    elapsed time that is negative or not finite.
    """
    elapsed = _finite(elapsed_seconds, "elapsed time")
    if elapsed <= 0:
        raise PowermetricsParseError("elapsed time is zero")
    energy: dict[str, float] = {}
    power: dict[str, float] = {}
    for name, joules in (energy_joules or {}).items():
        energy[name] = _finite(joules, f"{name} energy")
        power[name] = energy[name] / elapsed
    for name, watts in (power_watts or {}).items():
        if name not in energy:
            power[name] = _finite(watts, f"{name} power")
            energy[name] = power[name] * elapsed
    gpu_hz = None if gpu_frequency_hz is None else _finite(gpu_frequency_hz, "GPU frequency")
    cpu_hz = None if cpu_frequency_hz is None else _finite(cpu_frequency_hz, "CPU frequency")
    clusters = {name: _finite(hz, f"{name} frequency")
                for name, hz in (cluster_frequency_hz or {}).items()}
    return PowermetricsSample(
        timestamp=timestamp,
        elapsed_seconds=elapsed,
        energy_joules={c: energy[c] for c in sorted(energy, key=_component_order)},
        power_watts={c: power[c] for c in sorted(power, key=_component_order)},
        thermal_pressure=thermal_pressure,
        gpu_frequency_hz=gpu_hz,
        cluster_frequency_hz=clusters,
        hw_model=hw_model,
        os_build=os_build,
        cpu_frequency_hz=cpu_hz,
    )


def _component_order(name: str) -> tuple[int, str]:
    return (COMPONENTS.index(name) if name in COMPONENTS else len(COMPONENTS), name)


# --- plist -------------------------------------------------------------------------------


def _number(container: Mapping[str, Any], key: str) -> float | None:
    value = container.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PowermetricsParseError(f"{key} is not a number: {value!r}")
    return float(value)


def _dict(container: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PowermetricsParseError(f"{key} is not a dict")
    return value


def sample_from_plist(document: Mapping[str, Any]) -> PowermetricsSample:
    """Normalise one decoded plist document (a dict from plistlib). Raises
    PowermetricsParseError when `elapsed_ns` is missing, a field has the wrong type, or a
    figure is negative, not finite or (the elapsed time) zero."""
    elapsed_ns = _number(document, "elapsed_ns")
    if elapsed_ns is None:
        raise PowermetricsParseError("no elapsed_ns in plist sample")
    elapsed = elapsed_ns / 1e9
    processor = _dict(document, "processor")
    gpu = _dict(document, "gpu")

    energy: dict[str, float] = {}
    power: dict[str, float] = {}
    for component in ("cpu", "gpu", "ane", "package", "dram"):
        millijoules = _number(processor, f"{component}_energy")
        if millijoules is not None:
            energy[component] = millijoules / 1000.0
    # gpu_power-only plists have no processor dict; the gpu dict has its own counter, which
    # can differ from processor.gpu_energy (M2 Ultra: 72607 vs 73491 mJ), so it is only used
    # when processor's is absent.
    gpu_millijoules = _number(gpu, "gpu_energy")
    if "gpu" not in energy and gpu_millijoules is not None:
        energy["gpu"] = gpu_millijoules / 1000.0
    combined_mw = _number(processor, "combined_power")
    if combined_mw is not None:
        power["combined"] = combined_mw / 1000.0
    # Intel Macs: package energy in joules (not mJ) and average power in watts (not mW).
    package_joules = _number(processor, "package_joules")
    if "package" not in energy and package_joules is not None:
        energy["package"] = package_joules
    package_watts = _number(processor, "package_watts")
    if "package" not in energy and package_watts is not None:
        power["package"] = package_watts

    gpu_mhz = _number(gpu, "freq_hz")  # MHz despite the name
    cpu_hz = _number(processor, "freq_hz")  # Intel: the package's frequency, in Hz
    clusters: dict[str, float] = {}
    raw_clusters = processor.get("clusters", [])
    if not isinstance(raw_clusters, list):
        raise PowermetricsParseError("processor.clusters is not a list")
    for cluster in raw_clusters:
        if not isinstance(cluster, dict):
            raise PowermetricsParseError("processor.clusters entry is not a dict")
        name, hz = cluster.get("name"), _number(cluster, "freq_hz")
        if isinstance(name, str) and hz is not None:
            clusters[label_value(name)] = hz

    thermal = document.get("thermal_pressure")
    stamp = document.get("timestamp")
    model, build = document.get("hw_model"), document.get("kern_osversion")
    return build_sample(
        elapsed_seconds=elapsed,
        timestamp=stamp.replace(tzinfo=timezone.utc) if isinstance(stamp, datetime) else None,
        energy_joules=energy,
        power_watts=power,
        thermal_pressure=levels.from_powermetrics(thermal) if isinstance(thermal, str) else None,
        gpu_frequency_hz=None if gpu_mhz is None else gpu_mhz * 1e6,
        cluster_frequency_hz=clusters,
        hw_model=model if isinstance(model, str) else None,
        os_build=build if isinstance(build, str) else None,
        cpu_frequency_hz=cpu_hz,
    )


def parse_plist_document(chunk: bytes) -> PowermetricsSample:
    """One NUL-free plist document -> sample. Raises PowermetricsParseError on anything else."""
    try:
        document = plistlib.loads(chunk.strip(), fmt=plistlib.FMT_XML)
    except Exception as exc:  # plistlib raises a zoo of types on damaged XML
        raise PowermetricsParseError(f"not a plist document: {exc}") from None
    if not isinstance(document, dict):
        raise PowermetricsParseError("plist document is not a dict")
    return sample_from_plist(document)


def _complete(chunk: bytes) -> bool:
    return chunk.rstrip().endswith(b"</plist>")


def split_plist_stream(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete documents in `data`, and the unfinished rest.

    Splits on NUL, skips empty chunks (leading NULs from a truncated file, FORMAT.md pitfall
    8). The final piece counts as complete when it ends in `</plist>`: the NUL after a
    document may only come when the next one starts, and waiting for it would lag a sample.
    """
    pieces = data.split(b"\x00")
    rest = pieces.pop()
    documents = [p for p in pieces if p.strip()]
    if rest.strip() and _complete(rest):
        documents.append(rest)
        rest = b""
    return documents, rest if rest.strip() else b""


def parse_plist_stream(data: bytes) -> list[PowermetricsSample]:
    """Every sample in a captured `-f plist` stream.

    A last document that was cut off mid-write (no `</plist>`) is dropped, as asitop does;
    any other damaged document raises PowermetricsParseError.
    """
    documents, _unfinished = split_plist_stream(data)
    samples = []
    for index, document in enumerate(documents):
        try:
            samples.append(parse_plist_document(document))
        except PowermetricsParseError as exc:
            raise PowermetricsParseError(f"plist document {index + 1}: {exc}") from None
    if not samples:
        raise PowermetricsParseError("no complete powermetrics plist document found")
    return samples


class PlistStreamSplitter:
    """Incremental version of split_plist_stream for a pipe."""

    def __init__(self, max_buffer: int = 16 * 2**20) -> None:
        self._buffer = b""
        self._max = max_buffer

    def feed(self, data: bytes) -> list[bytes]:
        """The documents completed by `data`; raises PowermetricsParseError when an unfinished
        document outgrows the buffer (the buffer is dropped to resynchronise)."""
        documents, self._buffer = split_plist_stream(self._buffer + data)
        if len(self._buffer) > self._max:  # a runaway document: resynchronise on the next NUL
            self._buffer = b""
            raise PowermetricsParseError("plist document larger than the buffer limit")
        return documents


# --- samples -> Reading ------------------------------------------------------------------


def reading_from_samples(samples: Iterable[PowermetricsSample],
                         last: PowermetricsSample | None = None) -> Reading:
    """The Reading for the samples that arrived since the previous read.

    Energy is summed and the window is the sum of their `elapsed_ns`, so the sampler's power
    is exact over the windows powermetrics measured. Gauges (thermal, frequencies) come from
    the newest sample, or from `last` when nothing new arrived.
    """
    samples = list(samples)
    reading = Reading()
    if samples:
        window = 0.0
        for sample in samples:
            window += sample.elapsed_seconds
            for component, joules in sample.energy_joules.items():
                reading.energy_joules[component] = reading.energy_joules.get(component, 0.0) + joules
        reading.energy_window_seconds = window
        last = samples[-1]
    if last is not None:
        reading.thermal_pressure = last.thermal_pressure
        if last.gpu_frequency_hz is not None:
            reading.clock_hertz["gpu"] = last.gpu_frequency_hz
        if last.cpu_frequency_hz is not None:
            reading.clock_hertz["cpu"] = last.cpu_frequency_hz
        reading.clock_hertz.update(last.cluster_frequency_hz)
    return reading


def powermetrics_energy_parts(components: Collection[str]) -> dict[str, str]:
    """part -> total among powermetrics components (daemon/energy.py): `combined` is
    cpu + gpu + ane; macOS 12's `package` contains cpu, gpu, ane, dram (and combined). Only
    when an Apple component (cpu, gpu, ane, combined) is present: RAPL's `package` and `dram`
    are separate domains."""
    present = set(components)
    if not present & {"cpu", "gpu", "ane", "combined"}:
        return {}
    parts: dict[str, str] = {}
    for part in ("cpu", "gpu", "ane"):
        if part in present and "combined" in present:
            parts[part] = "combined"
        elif part in present and "package" in present:
            parts[part] = "package"
    for part in ("combined", "dram"):
        if part in present and "package" in present:
            parts[part] = "package"
    return parts
