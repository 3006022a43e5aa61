"""macOS powermetrics: the long-lived `powermetrics -f plist` child and its reader.

The parsers (the normalised sample, the NUL-separated plist stream) are pure and live in
powermetrics_plist.py; they are re-exported here. This module runs the child:

- one long-lived `powermetrics -f plist -i N` child (under `sudo -n` when not root), read on
  a background thread; `read()` drains the samples parsed since the previous read;
- restarted with exponential back-off when it dies;
- hygiene: other tools have seen the child grow to many GB overnight, so it is restarted on a
  schedule (`max_age_s`, default 6 h) and when its RSS passes `max_rss_bytes` (default
  256 MiB; checked every `rss_check_s`). The time between the old child's last sample and the
  new child's first window is a gap (`Reading.gaps`, counted in
  `soakd_source_gap_seconds_total`): no energy is invented for it. Each restart is a note in
  the Reading (journaled and logged by the daemon) and counted in `restarts`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from daemon.sources.base import Reading, Source, SourceError
from daemon.sources.powermetrics_plist import (
    COMPONENTS,
    DEFAULT_SAMPLERS,
    PlistStreamSplitter,
    PowermetricsParseError,
    PowermetricsSample,
    build_sample,
    parse_plist_document,
    parse_plist_stream,
    powermetrics_energy_parts,
    reading_from_samples,
    sample_from_plist,
    split_plist_stream,
)
from daemon.sources.registry import SourceOption, SourceSpec, parse_positive_float, parse_positive_int, register

__all__ = ["COMPONENTS", "DEFAULT_SAMPLERS", "PlistStreamSplitter", "PowermetricsParseError",
           "PowermetricsSample", "PowermetricsSource", "build_sample", "parse_plist_document",
           "parse_plist_stream", "powermetrics_command", "reading_from_samples", "sample_from_plist",
           "split_plist_stream"]


def powermetrics_command(interval_ms: int, samplers: Iterable[str], executable: str,
                         sudo: bool) -> list[str]:
    """The argv of the powermetrics child (`sudo -n` first when `sudo`): plist output every
    `interval_ms`, unbuffered (`-b 0`), with the given samplers. The sudoers rule soakd installs
    allows exactly this list (daemon/service_manager.py)."""
    command = [executable, "-f", "plist", "-i", str(interval_ms), "-b", "0",
               "--samplers", ",".join(samplers)]
    # -n: never prompt for a password (a prompt would hang the daemon forever).
    return ["sudo", "-n", *command] if sudo else command


class PowermetricsSource(Source):
    """One long-lived `powermetrics -f plist` child, read on a background thread.

    `read()` never blocks on the child: it drains the samples parsed since the last call.
    If the child dies, `read()` raises (the sampler counts the error) and the child is
    restarted with exponential back-off (`backoff_initial_s` doubling to `backoff_max_s`,
    reset once a restarted child delivers a sample). A child older than `max_age_s`, or whose
    RSS (with its own children: sudo runs powermetrics as a child) is above `max_rss_bytes`
    (checked every `rss_check_s` with psutil), is replaced at once; 0 turns either off. Not
    macOS, not installed, or no root and no passwordless sudo is reported by `available()` as
    a reason, not raised.

    `interval_ms` is powermetrics' sample interval (ms); `sudo` is auto (only when not root),
    always or never; a live child that delivers no sample for `stall_s` seconds (default the
    larger of 10 s and five intervals) makes `read()` raise. The constructor raises ValueError
    for an interval under 1 ms or another `sudo` value.
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
        max_age_s: float = 6 * 3600.0,
        max_rss_bytes: int = 256 * 2**20,
        rss_check_s: float = 10.0,
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
        self.max_age_s = max_age_s
        self.max_rss_bytes = max_rss_bytes
        self.rss_check_s = rss_check_s
        self._rss_due = 0.0
        self._last_arrival: float | None = None  # when the last sample of any child arrived
        self._gaps: list[tuple[float, float]] = []
        self.restarts: dict[str, int] = {"restarted_for_age": 0, "restarted_for_size": 0}

    # -- availability --

    def _resolved_executable(self) -> str | None:
        return shutil.which(self.executable) or (
            "/usr/bin/powermetrics" if os.path.exists("/usr/bin/powermetrics") else None)

    def _use_sudo(self) -> bool:
        if self.sudo == "auto":
            return os.geteuid() != 0
        return self.sudo == "always"

    def available(self) -> tuple[bool, str]:
        """macOS, powermetrics installed, and root or passwordless `sudo -n` for this exact
        command line; otherwise (False, the reason)."""
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
        self._rss_due = self._started_at + self.rss_check_s
        assert process.stdout is not None and process.stderr is not None
        self._threads = [
            threading.Thread(target=self._pump_stdout, args=(process.stdout, self._last_arrival, self._started_at),
                             name="powermetrics-stdout", daemon=True),
            threading.Thread(target=self._pump_stderr, args=(process.stderr,),
                             name="powermetrics-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _pump_stdout(self, stream: IO[bytes], gap_from: float | None, started: float) -> None:
        """Parse the child's stdout. The first sample closes the gap since `gap_from` (the
        previous child's last sample): it ends where this child's first window begins (its
        arrival minus its elapsed time, and not before the child started)."""
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
                arrived = self._clock()
                with self._lock:
                    if gap_from is not None:
                        window_start = max(started, arrived - sample.elapsed_seconds)
                        if window_start > gap_from:
                            self._gaps.append((gap_from, window_start))
                        gap_from = None
                    self._samples.append(sample)
                    self._last_sample_at = self._last_arrival = arrived
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
        """The samples parsed since the last read (energy summed over their measured windows),
        gaps left by a replaced child, and notes on replacements. Starts or replaces the child
        as needed; raises SourceError when the source is closed, while the child is not running
        (died, waiting for its restart, cannot start), when only unreadable output arrived, or
        when it stalls."""
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
        restarted = self._hygiene()
        with self._lock:
            samples = list(self._samples)
            self._samples.clear()
            errors = list(self._errors)
            self._errors.clear()
            last_sample_at = self._last_sample_at
            gaps, self._gaps = self._gaps, []
        reading = reading_from_samples(samples, self._last)
        reading.gaps = gaps
        if restarted is not None:
            reading.notes.append(restarted)
        if samples:
            self._last = samples[-1]
        if errors and not samples:
            raise SourceError(f"unreadable powermetrics output: {errors[-1]}")
        if not samples and self._clock() - last_sample_at > self.stall_s:
            raise SourceError(f"no powermetrics sample for {self._clock() - last_sample_at:.0f} s")
        return reading

    def _child_rss(self) -> int | None:
        """RSS of the child and its children in bytes (sudo -> powermetrics); None when psutil
        cannot see them (another user's process without root)."""
        import psutil

        process = self._process
        if process is None:
            return None
        try:
            parent = psutil.Process(process.pid)
            family = [parent, *parent.children(recursive=True)]
            return sum(int(p.memory_info().rss) for p in family)
        except psutil.Error:
            return None

    def _hygiene(self) -> str | None:
        """Replace a child that is too old or too big; returns why it was replaced."""
        if self._process is None:
            return None
        now = self._clock()
        why: tuple[str, str] | None = None
        age = now - self._started_at
        if self.max_age_s > 0 and age >= self.max_age_s:
            why = ("restarted_for_age", f"the powermetrics child ran {age:.0f} s "
                                        f"(max {self.max_age_s:.0f} s): replaced")
        elif self.max_rss_bytes > 0 and now >= self._rss_due:
            self._rss_due = now + self.rss_check_s
            rss = self._child_rss()
            if rss is not None and rss > self.max_rss_bytes:
                why = ("restarted_for_size", f"the powermetrics child's RSS is {rss / 2**20:.1f} MiB "
                                             f"(max {self.max_rss_bytes / 2**20:.1f} MiB): replaced")
        if why is None:
            return None
        self.restarts[why[0]] += 1
        process, self._process = self._process, None
        self._stop(process)
        self._start()
        return f"{why[0]}: {why[1]}"

    def close(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 3 s). Safe to call twice."""
        self._closed = True
        process, self._process = self._process, None
        if process is not None:
            self._stop(process)

    def _stop(self, process: subprocess.Popen[bytes]) -> None:
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


def _build(options: Mapping[str, Any]) -> PowermetricsSource:
    return PowermetricsSource(interval_ms=int(options.get("powermetrics_interval_ms", 1000)),
                              max_age_s=3600.0 * float(options.get("powermetrics_restart_hours", 6.0)),
                              max_rss_bytes=int(options.get("powermetrics_max_rss_mib", 256)) * 2**20)


register(SourceSpec(
    name="powermetrics", description="macOS powermetrics (root or sudo -n): CPU/GPU/ANE energy, thermal pressure",
    build=_build, platforms=("darwin",), order=10, energy_parts=powermetrics_energy_parts,
    options=(SourceOption("powermetrics_interval_ms", parse_positive_int,
                          "sampling interval of the powermetrics child in ms (default 1000)"),
             SourceOption("powermetrics_restart_hours", parse_positive_float,
                          "replace the powermetrics child after this many hours (default 6)"),
             SourceOption("powermetrics_max_rss_mib", parse_positive_int,
                          "replace the powermetrics child when its RSS passes this many MiB (default 256)"))))
