"""What `/healthz` answers, and the daemon's own metrics (journal writes, next rotation).

Everything here is read from cached state: the sampler's last snapshot, the scheduler's
heartbeat, the journal's write counters (read without its lock). Nothing touches hardware,
waits for the journal or renders metrics, so a probe costs well under a millisecond even while
the journal is locked or a rotation runs: cheap enough for a load balancer or a Kubernetes
liveness/readiness probe.

`/healthz` is 200 when the daemon is running and its scheduler, executor and sampler are alive
("status": "ok", or "degraded" while journal writes wait in memory), 503 otherwise ("failing",
with the reasons in "problems"). Telemetry sources that are down do not fail it (a missing
NVML or RAPL is normal); each source's state is listed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.journal import JournalStats
from daemon.metric_catalog import BY_NAME
from daemon.sampler import Snapshot

HEARTBEAT_STALE_S = 10.0  # the scheduler's 1-s heartbeat job has not run for this long: dead


@dataclass(frozen=True)
class Liveness:
    """The service's own state at one instant (monotonic seconds unless said otherwise)."""

    stage: str  # starting | running | stopping
    uptime_seconds: float
    listen: str
    scheduler_running: bool
    heartbeat_age_seconds: float | None  # since the scheduler's heartbeat job last ran
    executor_alive: bool
    busy: str | None  # rotation | micro | None
    rotation_id: int | None
    next_rotation: float | None  # unix time


def _iso(stamp: float | None) -> str | None:
    return datetime.fromtimestamp(stamp, tz=timezone.utc).isoformat() if stamp else None


def health(live: Liveness, snapshot: Snapshot, journal: JournalStats, sampler_interval_s: float,
           now: float) -> tuple[bool, dict[str, Any]]:
    """(healthy, the /healthz document). `now` is on the sampler's (monotonic) clock."""
    sample_age = now - snapshot.monotonic
    sampler_alive = sample_age < max(10.0, 5 * sampler_interval_s)
    heartbeat = live.heartbeat_age_seconds
    scheduler_alive = live.scheduler_running and heartbeat is not None and heartbeat < HEARTBEAT_STALE_S
    problems = [f"daemon {live.stage}"] if live.stage != "running" else []
    problems += [what for what, alive in (("scheduler not running", scheduler_alive),
                                          ("executor thread ended", live.executor_alive),
                                          ("sampler stalled", sampler_alive)) if not alive]
    waiting = journal.failing or journal.pending_rows > 0
    status = "failing" if problems else "degraded" if waiting else "ok"
    document = {
        "status": status, "problems": problems, "pid": os.getpid(),
        "uptime_seconds": round(live.uptime_seconds, 1), "listen": live.listen,
        "scheduler": {"alive": scheduler_alive,
                      "heartbeat_age_seconds": round(heartbeat, 2) if heartbeat is not None else None,
                      "next_rotation": _iso(live.next_rotation)},
        "executor": {"alive": live.executor_alive, "busy": live.busy},
        "rotation": {"active": live.rotation_id is not None, "id": live.rotation_id},
        "sampler": {"alive": sampler_alive, "last_sample_age_seconds": round(sample_age, 2)},
        "journal": {"ok": not waiting, "pending_rows": journal.pending_rows,
                    "errors_total": journal.errors_total, "dropped_rows_total": journal.dropped_rows_total,
                    "last_error": journal.last_error if journal.failing else None},
        "sources": {name: {"up": h.up, "reason": h.reason} for name, h in sorted(snapshot.health.items())},
    }
    return not problems, document


class DaemonCollector(Collector):
    """soakd_journal_* and soakd_next_rotation_timestamp_seconds, read at scrape time."""

    def __init__(self, journal_stats: Callable[[], JournalStats],
                 next_rotation: Callable[[], float | None]) -> None:
        self._journal_stats = journal_stats
        self._next_rotation = next_rotation

    def collect(self) -> Iterator[Metric]:
        """The journal's write health and the next rotation time, read at scrape time."""
        stats = self._journal_stats()
        for name, value in (("soakd_journal_errors_total", stats.errors_total),
                            ("soakd_journal_dropped_rows_total", stats.dropped_rows_total)):
            counter = CounterMetricFamily(name[: -len("_total")], BY_NAME[name].help)
            counter.add_metric([], float(value))
            yield counter
        yield GaugeMetricFamily("soakd_journal_pending_rows", BY_NAME["soakd_journal_pending_rows"].help,
                                value=float(stats.pending_rows))
        upcoming = self._next_rotation()
        if upcoming is not None:
            yield GaugeMetricFamily("soakd_next_rotation_timestamp_seconds",
                                    BY_NAME["soakd_next_rotation_timestamp_seconds"].help, value=upcoming)
