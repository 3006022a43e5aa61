"""When the first rotation after a start runs (issue 10 item 3): pure function, fixed times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from daemon.schedule import first_rotation, trigger

NOW = datetime(2026, 12, 1, 10, 20, 0, tzinfo=timezone.utc)
HOUR = 3600.0


@pytest.mark.parametrize("last, run_at_start, expected", [
    (None, True, NOW),  # never ran: now
    (None, False, NOW + timedelta(hours=1)),  # never ran, waits: one interval from now
    (NOW - timedelta(hours=2), True, NOW),  # more than one interval ago: now
    (NOW - timedelta(minutes=10), True, NOW + timedelta(minutes=50)),  # last start + interval
    (NOW - timedelta(minutes=10), False, NOW + timedelta(minutes=50)),
    (NOW - timedelta(minutes=150), False, NOW + timedelta(minutes=30)),  # the grid through the last start
])
def test_interval(last: datetime | None, run_at_start: bool, expected: datetime) -> None:
    plan = first_rotation(NOW, last, HOUR, None, run_at_start)
    assert plan.first == expected and plan.reason


@pytest.mark.parametrize("last, run_at_start, expected", [
    (None, True, NOW),
    (None, False, NOW.replace(minute=0) + timedelta(hours=1)),
    (NOW - timedelta(minutes=30), True, NOW),  # 10:00 passed since 09:50: now
    (NOW - timedelta(minutes=10), True, NOW.replace(minute=0) + timedelta(hours=1)),  # 10:10: wait for 11:00
    (NOW - timedelta(minutes=30), False, NOW.replace(minute=0) + timedelta(hours=1)),
])
def test_cron(last: datetime | None, run_at_start: bool, expected: datetime) -> None:
    assert first_rotation(NOW, last, HOUR, "0 * * * *", run_at_start).first == expected


def test_the_trigger_continues_every_interval_after_the_first() -> None:
    first = NOW + timedelta(minutes=50)
    interval = trigger(HOUR, None, 0, first)
    assert interval.get_next_fire_time(None, NOW) == first
    assert interval.get_next_fire_time(first, first + timedelta(seconds=1)) == first + timedelta(hours=1)
    cron = trigger(HOUR, "30 * * * *", 5, first)
    assert cron.jitter == 5
