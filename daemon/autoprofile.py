"""Which profile a rotation runs, and whether it fits its interval (issue: the first five minutes).

`profile = "auto"` (the default) picks what the hardware can finish: the heavy shapes where an
accelerator runs, the `cpu` shapes on a host where only the CPU runs (a heavy rotation there
takes hours). Under `auto` the phases are shortened, never lengthened, so that a rotation fits
the schedule's interval (in an hour the heavy profile's 20-minute phases become 18: three
phases, three CPU baselines when they must be measured, and the probe, preparation and
hand-overs). An explicitly configured profile is run as
configured; when its estimate does not fit the interval, the daemon says so (log, metric).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from daemon.config import Config
from workloads.phases import (
    AUTO_PROFILE,
    Profile,
    auto_profile,
    estimated_rotation_seconds,
    fit_to_interval,
    get_profile,
)


@dataclass(frozen=True)
class ProfileChoice:
    """The profile a rotation runs and why; its estimated wall time against the interval (s).

    `interval_s` is None for a schedule whose interval is not fixed; `fits` is None then.
    """

    name: str
    reason: str
    profile: Profile
    estimate_s: float
    interval_s: float | None
    fits: bool | None

    def to_dict(self) -> dict[str, object]:
        """For the journal's state and `soakd status`."""
        return {"profile": self.name, "reason": self.reason, "phase_seconds": self.profile.phase_seconds,
                "estimate_seconds": round(self.estimate_s, 1), "interval_seconds": self.interval_s,
                "fits": self.fits}


def schedule_interval(config: Config, now: datetime | None = None) -> float | None:
    """Seconds between two scheduled rotations: the interval, or the gap between the next two
    cron times (None when the cron expression has no next time)."""
    if config.cron is None:
        return config.interval_seconds
    from apscheduler.triggers.cron import CronTrigger

    trigger = CronTrigger.from_crontab(config.cron, timezone=timezone.utc)
    start = now or datetime.now(timezone.utc)
    first = trigger.get_next_fire_time(None, start)
    second = trigger.get_next_fire_time(first, first + timedelta(seconds=1)) if first else None
    return (second - first).total_seconds() if first and second else None


def phase_units(config: Config) -> int:
    """Phases x precisions a rotation runs (`auto` precision is one)."""
    return len(config.phases) * max(1, len(config.precisions))


def choose_profile(config: Config, backends: list[str]) -> ProfileChoice:
    """The profile for `config` on a host where `backends` (resolved, no `auto`) run.

    Raises KeyError or ValueError for an unknown profile or bad overrides (config validation
    has already refused those).
    """
    explicit = config.profile != AUTO_PROFILE
    name, reason = (config.profile, "configured") if explicit else auto_profile(backends)
    profile = get_profile(name, config.profile_overrides)
    units = phase_units(config)
    interval = schedule_interval(config)
    baseline = (len(config.phases) if config.cpu_baseline != "off" and "cpu" not in backends
                and profile.cpu_baseline_seconds > 0 else 0)
    if not explicit and "phase_seconds" not in config.profile_overrides and interval:
        # room for the CPU baselines when they must be measured (a cached one costs nothing)
        fitted = fit_to_interval(profile, interval - baseline * profile.cpu_baseline_seconds, units)
        if fitted.phase_seconds < profile.phase_seconds:
            reason += (f"; phases of {fitted.phase_seconds / 60:g} min (not {profile.phase_seconds / 60:g}) "
                       f"so a rotation fits the {interval / 60:g} min interval")
        profile = fitted
    estimate = estimated_rotation_seconds(profile, units, baseline)
    return ProfileChoice(name, reason, profile, estimate, interval,
                         None if interval is None else estimate <= interval)
