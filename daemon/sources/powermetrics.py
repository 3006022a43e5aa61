"""macOS powermetrics: the normalised sample, the plist stream parser and the live reader.

Format facts (../shared/fixtures/powermetrics/FORMAT.md):
- `-f plist` prints one XML plist per sample, separated by a single NUL byte.
- `processor.*_energy` is mJ over the real window `elapsed_ns`; `*_power` is mW. Power is
  always computed here as energy / elapsed, never from `-i`.
- `gpu.freq_hz` is MHz despite its name; cluster `freq_hz` is Hz.
- Monterey (12) has `package_energy` / `dram_energy` and no `combined_power`; Ventura (13)+
  has `combined_power` (mW only, no energy key).
- With the gpu_power sampler alone there is no `processor` dict: energy is `gpu.gpu_energy`.

The text format parser lives in powermetrics_text.py and builds the same `PowermetricsSample`
through `build_sample`, so plist, text and replay share one normaliser.
"""

from __future__ import annotations

import contextlib
import math
import os
import plistlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from daemon import levels
from daemon.sources.base import Reading, Source, SourceError, label_value

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
) -> PowermetricsSample:
    """The shared normaliser: fills in power from energy and energy from power.

    A component given as energy wins over the same component given as power, because the
    energy counter is what the power figure was computed from.
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
    """Normalise one decoded plist document (a dict from plistlib)."""
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

    gpu_mhz = _number(gpu, "freq_hz")  # MHz despite the name
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
        reading.clock_hertz.update(last.cluster_frequency_hz)
    return reading


# --- the live child ----------------------------------------------------------------------


def powermetrics_command(interval_ms: int, samplers: Iterable[str], executable: str,
                         sudo: bool) -> list[str]:
    command = [executable, "-f", "plist", "-i", str(interval_ms), "-b", "0",
               "--samplers", ",".join(samplers)]
    # -n: never prompt for a password (a prompt would hang the daemon forever).
    return ["sudo", "-n", *command] if sudo else command


class PowermetricsSource(Source):
    """One long-lived `powermetrics -f plist` child, read on a background thread.

    `read()` never blocks on the child: it drains the samples parsed since the last call.
    If the child dies, `read()` raises (the sampler counts the error) and the child is
    restarted with exponential back-off (`backoff_initial_s` doubling to `backoff_max_s`,
    reset once a restarted child delivers a sample). Not macOS, not installed, or no root
    and no passwordless sudo is reported by `available()` as a reason, not raised.
    """

    name = "powermetrics"

    def __init__(
        self,
        interval_ms: int = 1000,
        samplers: Iterable[str] = DEFAULT_SAMPLERS,
        executable: str = "powermetrics",
        sudo: str = "auto",  # "auto": only when not root; "always"; "never"
        platform: str | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        stall_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_ms < 1:
            raise ValueError(f"powermetrics interval must be >= 1 ms, got {interval_ms}")
        if sudo not in ("auto", "always", "never"):
            raise ValueError(f"sudo must be auto, always or never, got {sudo!r}")
        self.interval_ms = interval_ms
        self.samplers = tuple(samplers)
        self.executable = executable
        self.sudo = sudo
        self.platform = platform or sys.platform
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        # No sample for this long from a live child is reported as an error (not fatal).
        self.stall_s = stall_s if stall_s is not None else max(10.0, 5 * interval_ms / 1000)
        self._clock = clock
        self._lock = threading.Lock()
        self._samples: deque[PowermetricsSample] = deque(maxlen=3600)
        self._last: PowermetricsSample | None = None
        self._errors: deque[str] = deque(maxlen=20)
        self._stderr: deque[str] = deque(maxlen=20)
        self._process: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._backoff = backoff_initial_s
        self._next_start = 0.0
        self._last_sample_at = 0.0
        self._started_at = 0.0
        self.starts = 0
        self._closed = False

    # -- availability --

    def _resolved_executable(self) -> str | None:
        return shutil.which(self.executable) or (
            "/usr/bin/powermetrics" if os.path.exists("/usr/bin/powermetrics") else None)

    def _use_sudo(self) -> bool:
        if self.sudo == "auto":
            return os.geteuid() != 0
        return self.sudo == "always"

    def available(self) -> tuple[bool, str]:
        if self.platform != "darwin":
            return False, f"unavailable: powermetrics needs macOS (this is {self.platform})"
        path = self._resolved_executable()
        if path is None:
            return False, "unavailable: powermetrics not installed"
        if not self._use_sudo():
            return True, "ok"
        if shutil.which("sudo") is None:
            return False, "unavailable: not root and no sudo"
        try:
            # `sudo -n -l CMD ARGS` says whether CMD may run without a password, without running
            # it. The exact arguments matter: the sudoers rule soakd installs (launchd/) allows
            # powermetrics with one fixed argument list only, and a bare path would not match it.
            command = powermetrics_command(self.interval_ms, self.samplers, path, sudo=False)
            check = subprocess.run(["sudo", "-n", "-l", *command], capture_output=True, timeout=5,
                                   stdin=subprocess.DEVNULL, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"unavailable: sudo check failed: {exc}"
        if check.returncode != 0:
            return False, ("unavailable: powermetrics needs root; run soakd as root or allow "
                           "passwordless sudo for powermetrics (sudo -n refused)")
        return True, "ok"

    # -- child management --

    def _start(self) -> None:
        path = self._resolved_executable() or self.executable
        command = powermetrics_command(self.interval_ms, self.samplers, path, self._use_sudo())
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
        self._process = process
        self.starts += 1
        self._started_at = self._last_sample_at = self._clock()
        assert process.stdout is not None and process.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump_stdout, args=(process.stdout,),
                             name="powermetrics-stdout", daemon=True),
            threading.Thread(target=self._pump_stderr, args=(process.stderr,),
                             name="powermetrics-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_stdout(self, stream: IO[bytes]) -> None:
        splitter = PlistStreamSplitter()
        fd = stream.fileno()
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                break
            if not data:
                break
            try:
                documents = splitter.feed(data)
            except PowermetricsParseError as exc:
                self._note_error(str(exc))
                continue
            for document in documents:
                try:
                    sample = parse_plist_document(document)
                except PowermetricsParseError as exc:
                    self._note_error(str(exc))
                    continue
                with self._lock:
                    self._samples.append(sample)
                    self._last_sample_at = self._clock()
                    self._backoff = self.backoff_initial_s

    def _pump_stderr(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            text = line.decode("utf-8", "replace").strip()
            if text:
                with self._lock:
                    self._stderr.append(text)

    def _note_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    def _reap(self) -> str | None:
        """If the child has exited: schedule a restart and return why it ended."""
        process = self._process
        if process is None or process.poll() is None:
            return None
        for thread in self._threads:
            thread.join(timeout=1.0)
        self._process = None
        with self._lock:
            stderr = " | ".join(self._stderr)
            self._stderr.clear()
        if "ane_power" in self.samplers and "ane_power" in stderr:
            # Older macOS (Big Sur's -h lists no ane_power sampler) rejects the name; ANE
            # energy still comes from cpu_power's processor dict.
            self.samplers = tuple(s for s in self.samplers if s != "ane_power")
        delay = self._backoff
        self._next_start = self._clock() + delay
        self._backoff = min(self._backoff * 2, self.backoff_max_s)
        detail = f": {stderr}" if stderr else ""
        return (f"powermetrics exited with code {process.returncode}{detail}; "
                f"restarting in {delay:.3g} s")

    def read(self) -> Reading:
        if self._closed:
            raise SourceError("powermetrics source is closed")
        died = self._reap()
        if died is not None:
            raise SourceError(died)
        if self._process is None:
            now = self._clock()
            if now < self._next_start:
                raise SourceError(f"powermetrics not running; restart in "
                                  f"{self._next_start - now:.3g} s")
            try:
                self._start()
            except OSError as exc:
                self._next_start = now + self._backoff
                self._backoff = min(self._backoff * 2, self.backoff_max_s)
                raise SourceError(f"cannot start powermetrics: {exc}") from None
        with self._lock:
            samples = list(self._samples)
            self._samples.clear()
            errors = list(self._errors)
            self._errors.clear()
            last_sample_at = self._last_sample_at
        reading = reading_from_samples(samples, self._last)
        if samples:
            self._last = samples[-1]
        if errors and not samples:
            raise SourceError(f"unreadable powermetrics output: {errors[-1]}")
        if not samples and self._clock() - last_sample_at > self.stall_s:
            raise SourceError(f"no powermetrics sample for {self._clock() - last_sample_at:.0f} s")
        return reading

    def close(self) -> None:
        self._closed = True
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            # SIGTERM makes powermetrics flush and exit; under sudo, sudo relays it.
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=3)
        for thread in self._threads:
            thread.join(timeout=1.0)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
