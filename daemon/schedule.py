"""When rotations run: the first one after a (re)start, and the trigger for the rest.

After a start (or a reload that changes the schedule) the rotation the journal remembers last
decides, so a restart neither waits silently nor runs one rotation too many:

- `run_at_start = true` (the default): a rotation now if none ever started or the last one
  started more than one interval ago (for `cron`: if a cron time passed since it started);
  otherwise at the last start + the interval (the next cron time).
- `run_at_start = false`: wait for the schedule: the next point of the interval grid that
  runs through the last start (or one interval from now if none ever ran), the next cron time.

Then every interval after that first one (APScheduler's IntervalTrigger, or the CronTrigger),
with `jitter_seconds` of random delay either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger


@dataclass(frozen=True)
class Plan:
    """The first rotation's time and why, for the log and `soakd status`."""

    first: datetime
    reason: str


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def first_rotation(now: datetime, last_start: datetime | None, interval_s: float, cron: str | None,
                   run_at_start: bool) -> Plan:
    """When the first rotation after a start runs (see the module docstring). Times are aware
    datetimes; `interval_s` is ignored when `cron` is set."""
    if cron is not None:
        trigger = CronTrigger.from_crontab(cron, timezone=timezone.utc)
        upcoming = trigger.get_next_fire_time(None, now)
        if last_start is None:
            return Plan(now, "no rotation yet") if run_at_start else Plan(upcoming, "next cron time")
        missed = trigger.get_next_fire_time(None, last_start + timedelta(seconds=1))
        if run_at_start and missed is not None and missed <= now:
            return Plan(now, f"a cron time passed since the last rotation started "
                             f"({_ago((now - last_start).total_seconds())})")
        return Plan(upcoming, "next cron time")
    interval = timedelta(seconds=interval_s)
    if last_start is None:
        return Plan(now, "no rotation yet") if run_at_start else Plan(
            now + interval, "run_at_start = false: one interval from now")
    since = (now - last_start).total_seconds()
    if since < interval_s:
        return Plan(last_start + interval, f"the last rotation started {_ago(since)}: one interval after it")
    if run_at_start:
        return Plan(now, f"the last rotation started {_ago(since)}, more than one interval ago")
    steps = math.floor(since / interval_s) + 1
    return Plan(last_start + steps * interval, "run_at_start = false: the next interval after the last rotation")


def trigger(interval_s: float, cron: str | None, jitter_s: float, first: datetime) -> Any:
    """The APScheduler trigger for the rotations after `first`."""
    jitter = int(jitter_s) or None
    if cron is not None:
        cron_trigger = CronTrigger.from_crontab(cron, timezone=timezone.utc)
        cron_trigger.jitter = jitter
        return cron_trigger
    return IntervalTrigger(seconds=interval_s, start_date=first, timezone=timezone.utc, jitter=jitter)
