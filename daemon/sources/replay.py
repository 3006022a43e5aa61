"""Replay a recorded powermetrics file (plist or text) as a live source.

For demos and tests only: it lets a Linux box without a Mac show the Apple dashboards, and
lets CI push real recorded energy/thermal data through the sampler and the exporter. Each
`read()` hands out the next recorded sample, looping at the end, so energy keeps growing
monotonically. The energy of a sample is reported over the sample's own recorded window, so
power is the recorded power whatever the sampler's cadence; energy therefore accumulates at
the recording's rate per read, not at wall-clock rate. The source is named "replay" (not
"powermetrics") so nobody mistakes replayed numbers for measurements of this machine.
"""

from __future__ import annotations

from pathlib import Path

from daemon.sources.base import Reading, Source, SourceUnavailable
from daemon.sources.powermetrics_plist import (
    PowermetricsParseError,
    PowermetricsSample,
    parse_plist_stream,
    powermetrics_energy_parts,
    reading_from_samples,
)
from daemon.sources.powermetrics_text import parse_text
from daemon.sources.registry import SourceOption, SourceSpec, parse_str, register

FORMATS: tuple[str, ...] = ("auto", "plist", "text")


def detect_format(data: bytes) -> str:
    """'plist' when the data holds an XML plist, else 'text'."""
    head = data.lstrip(b"\x00 \t\r\n")[:4096]
    return "plist" if head.startswith((b"<?xml", b"<!DOCTYPE plist", b"<plist")) else "text"


def parse_powermetrics(data: bytes, fmt: str = "auto") -> list[PowermetricsSample]:
    """Samples from captured powermetrics output in either format (`fmt`: auto, plist or
    text; auto looks at the first bytes). Raises ValueError for another `fmt` and
    PowermetricsParseError for output that does not parse."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if fmt == "auto":
        fmt = detect_format(data)
    return parse_plist_stream(data) if fmt == "plist" else parse_text(data)


def load_samples(path: str | Path, fmt: str = "auto") -> list[PowermetricsSample]:
    """Read and parse a file; OSError and PowermetricsParseError propagate."""
    return parse_powermetrics(Path(path).read_bytes(), fmt)


class ReplaySource(Source):
    """A recorded powermetrics file, one sample per read, looping.

    `path` is read and parsed on first use (`available()` or `read()`), in format `fmt`
    (auto, plist or text); `name` is the source name the readings are filed under; with
    `loop` False the replay ends after the last sample.
    """

    def __init__(self, path: str | Path, fmt: str = "auto", name: str = "replay",
                 loop: bool = True) -> None:
        self.path = Path(path)
        self.fmt = fmt
        self.name = name
        self.loop = loop
        self._samples: list[PowermetricsSample] | None = None
        self._error: str | None = None
        self._index = 0

    def _load(self) -> list[PowermetricsSample]:
        if self._samples is None:
            try:
                self._samples = load_samples(self.path, self.fmt)
            except (OSError, PowermetricsParseError, ValueError) as exc:
                self._error = f"unavailable: cannot replay {self.path}: {exc}"
                raise SourceUnavailable(self._error) from None
        return self._samples

    def available(self) -> tuple[bool, str]:
        """(True, "ok") when the file loads and parses, else (False, why)."""
        try:
            self._load()
        except SourceUnavailable as exc:
            return False, str(exc)
        return True, "ok"

    def read(self) -> Reading:
        """The next recorded sample as a Reading (energy over the sample's own recorded
        window). Raises SourceUnavailable when the file cannot be read or parsed, or when a
        replay without `loop` has handed out every sample."""
        samples = self._load()
        if self._index >= len(samples):
            if not self.loop:
                raise SourceUnavailable(f"replay of {self.path} finished")
            self._index = 0
        sample = samples[self._index]
        self._index += 1
        return reading_from_samples([sample])


register(SourceSpec(
    name="replay", description="a recorded powermetrics capture replayed (demos, CI); off unless replay_file is set",
    build=lambda options: ReplaySource(str(options["replay_file"])), default_on=False,
    enabled_by="replay_file", order=0, energy_parts=powermetrics_energy_parts,
    options=(SourceOption("replay_file", parse_str, "a recorded powermetrics capture (plist or text)"),)))
