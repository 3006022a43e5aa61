"""Live stability figures per phase x backend x precision, from the worker's step events.

Measured time is counted per key, so when backends alternate in slices each one's "first
minute" and "last minute" are its own measured seconds, not wall time shared with the others.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

# Whole-system energy is daemon/energy.py's; re-exported for callers that still import it here.
from daemon.energy import system_energy

__all__ = ["BASELINE_SECONDS", "RECENT_SECONDS", "THROUGHPUT_SECONDS", "Segment", "StabilityTracker",
           "system_energy"]

BASELINE_SECONDS = 60.0  # the phase's first minute of measured time after warm-up
RECENT_SECONDS = 60.0  # window for the sustained ratio and the variation


def window_for(phase_seconds: float) -> float:
    """The first/last window of a phase planned for `phase_seconds` (0: unknown): a minute, or
    an eighth of a shorter phase, so a phase of a few seconds still gets two disjoint windows
    per backend when two backends share it."""
    return min(RECENT_SECONDS, phase_seconds / 8.0) if phase_seconds > 0 else RECENT_SECONDS
THROUGHPUT_SECONDS = 10.0  # window for the "throughput now" gauge


@dataclass
class Segment:
    """One step event's share of a tracker's history: `seconds` of measured time (warm-up
    excluded) that did `flop` floating-point operations, ending `measured_end` cumulative
    measured seconds into the key's phase run."""

    measured_end: float  # cumulative measured seconds at the segment's end
    seconds: float
    flop: float


@dataclass
class StabilityTracker:
    """Throughput history of one phase/backend/precision within one phase run.

    Fed by `add` with each step event's measured seconds and FLOP, and by `add_energy` with
    the joules measured over those seconds. `window` (seconds of measured time) is the length
    of the first window (the baseline) and of the last one (`window_for` sizes it from the
    planned phase length). Segments older than the longer of `window` and
    `THROUGHPUT_SECONDS` are dropped, so memory stays bounded over a long phase.
    """

    window: float = RECENT_SECONDS  # the first and the last window (s of measured time)
    measured: float = 0.0
    flop: float = 0.0
    baseline_flop: float = 0.0
    baseline_seconds: float = 0.0
    energy_joules: float = 0.0
    energy_known: bool = False
    segments: deque[Segment] = field(default_factory=deque)

    def add(self, seconds: float, flop: float) -> None:
        """Count `seconds` of measured time that did `flop` FLOP; a segment of 0 s or less is
        ignored. The first `window` seconds also fill the baseline (a segment that straddles
        its end is split in proportion to time)."""
        if seconds <= 0:
            return
        if self.baseline_seconds < self.window:
            take = min(seconds, self.window - self.baseline_seconds)
            self.baseline_seconds += take
            self.baseline_flop += flop * take / seconds
        self.measured += seconds
        self.flop += flop
        self.segments.append(Segment(self.measured, seconds, flop))
        while self.segments and self.segments[0].measured_end <= self.measured - max(self.window, THROUGHPUT_SECONDS):
            self.segments.popleft()

    def _window(self, seconds: float) -> list[Segment]:
        # segments that end inside the window; a float tolerance keeps an exact boundary outside
        start = self.measured - seconds + 1e-9
        return [s for s in self.segments if s.measured_end > start]

    def throughput(self, window: float = THROUGHPUT_SECONDS) -> float | None:
        """FLOP/s over the segments that end within the last `window` seconds of measured time
        (10 s by default); None when there are none."""
        segments = self._window(window)
        total = sum(s.seconds for s in segments)
        return sum(s.flop for s in segments) / total if total > 0 else None

    def sustained_ratio(self) -> float | None:
        """Throughput over the last minute / throughput over the first minute after warm-up.

        None until the two windows are disjoint (at least twice `window` of
        measured time): before that they share measured time and the ratio is 1 by
        construction, not by measurement. (The verdicts' stability score is another figure:
        the worst loop over the best loop.)
        """
        if self.measured < 2 * self.window - 1e-9:
            return None
        if self.baseline_seconds <= 0 or self.baseline_flop <= 0:
            return None
        recent = self.throughput(self.window)
        return recent / (self.baseline_flop / self.baseline_seconds) if recent is not None else None

    def variation(self) -> float | None:
        """Coefficient of variation of segment throughputs (segments are ~0.25 s) in the last minute."""
        rates = [s.flop / s.seconds for s in self._window(self.window) if s.seconds > 0]
        if len(rates) < 2:
            return None
        mean = sum(rates) / len(rates)
        if mean <= 0:
            return None
        var = sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)
        return math.sqrt(var) / mean

    def add_energy(self, joules: float | None) -> None:
        """Add the whole-system energy measured over a slice's measured time, in joules; None
        (not measured) or a negative figure is skipped."""
        if joules is not None and joules >= 0:
            self.energy_joules += joules
            self.energy_known = True

    def flop_per_joule(self) -> float | None:
        """FLOP per joule: every FLOP counted by `add` over every joule counted by
        `add_energy`; None until some positive energy was added."""
        if not self.energy_known or self.energy_joules <= 0:
            return None
        return self.flop / self.energy_joules
