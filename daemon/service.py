"""`soakd run`: the long-running service.

Threads: the main thread handles signals and waits; the sampler has its own thread;
APScheduler's thread only *requests* rotations; one executor thread runs requests (rotations
and micro-benchmarks) one at a time, each slice in a child worker; prometheus_client's HTTP
thread serves scrapes from cached state. Nothing here runs a workload step itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, start_http_server

from daemon.config import Config, ConfigError, heavy_skip_reason, load_config
from daemon.exporter import SnapshotCollector, WorkloadMetrics
from daemon.journal import Journal
from daemon.log import get_logger
from daemon.pidlock import PidLock
from daemon.recorder import Recorder, plan_from_config
from daemon.sampler import Sampler, default_sources
from workloads.backends import parse_backends
from workloads.host import host_info
from workloads.rotation import RotationRunner

STOP_TIMEOUT_S = 8.0  # the executor gets this long after SIGTERM; exit stays under 10 s
TELEMETRY_EVERY_S = 10.0  # journal a telemetry row this often during rotations


@dataclass
class Request:
    kind: str  # rotation | micro
    trigger: str  # schedule | signal | start


class Executor:
    """Runs requests one at a time on its own thread; at most one of each kind waits."""

    def __init__(self, handler: Callable[[Request], None], log: Any) -> None:
        self._handler = handler
        self._log = log
        self._cond = threading.Condition()
        self._pending: dict[str, Request] = {}
        self._busy: Request | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="soakd-executor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, request: Request) -> bool:
        with self._cond:
            if self._closed:
                return False
            if request.kind in self._pending:
                self._log.info("request_coalesced", kind=request.kind, trigger=request.trigger)
                return False
            self._pending[request.kind] = request
            if self._busy is not None:
                self._log.info("request_queued", kind=request.kind, trigger=request.trigger,
                               running=self._busy.kind)
            self._cond.notify()
            return True

    @property
    def busy(self) -> Request | None:
        return self._busy

    def close(self, timeout: float) -> bool:
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                kind = "rotation" if "rotation" in self._pending else next(iter(self._pending))
                self._busy = self._pending.pop(kind)
            try:
                self._handler(self._busy)
            except Exception:
                self._log.exception("request_failed", kind=self._busy.kind)
            finally:
                with self._cond:
                    self._busy = None


class Service:
    def __init__(self, config: Config, config_path: Path | None, flags: dict[str, Any],
                 sampler_factory: Callable[[Config], Sampler] | None = None) -> None:
        self.config = config
        self._config_path = config_path
        self._flags = flags
        self.log = get_logger()
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._signals: list[int] = []
        self._sampler_factory = sampler_factory or (
            lambda c: Sampler(default_sources(c.sources), interval_s=c.sampler_interval_seconds))
        self._rotation_id: int | None = None
        self._last_throttles = 0
        self._last_level: str | None = None
        self._last_health: dict[str, bool] = {}
        self._last_telemetry = 0.0
        self._last_event_seq = 0

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        lock = PidLock(self.config.pid_path)
        lock.acquire()
        try:
            return self._serve()
        finally:
            lock.release()

    def _serve(self) -> int:
        config = self.config
        self.journal = Journal(config.journal_path)
        interrupted = self.journal.close_dangling_rotations()
        self.journal.add_event("start", {"pid": os.getpid(), "interrupted_rotations": interrupted,
                                         "listen": config.listen, "profile": config.profile})
        self.sampler = self._sampler_factory(config)
        self.sampler.start()
        self.registry = CollectorRegistry()
        self.metrics = WorkloadMetrics(self.registry)
        self.recorder = Recorder(self.journal, self.metrics, self.sampler, self.log)
        self.registry.register(SnapshotCollector(self.sampler.snapshot, self._info(),
                                                 lambda: dict(self.metrics.worker_memory)))
        server, _server_thread = start_http_server(config.listen_port, addr=config.listen_host,
                                                  registry=self.registry)
        self.log.info("listening", address=f"http://{config.listen}/metrics",
                      state_dir=str(config.state_dir), profile=config.profile,
                      config=str(config.source_path) if config.source_path else None)
        self.executor = Executor(self._handle_request, self.log)
        self.executor.start()
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.scheduler.add_job(self._watch, IntervalTrigger(seconds=1.0), id="watch",
                               max_instances=1, coalesce=True)
        self._schedule_rotations(first=True)
        self.scheduler.start()
        for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            while not self.stop_event.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                while self._signals:
                    self._dispatch_signal(self._signals.pop(0))
        finally:
            self._shutdown(server)
        return 0

    def _shutdown(self, server: Any) -> None:
        started = time.monotonic()
        self.log.info("stopping")
        with contextlib.suppress(Exception):  # already stopped
            self.scheduler.shutdown(wait=False)
        finished = self.executor.close(STOP_TIMEOUT_S)
        if not finished:
            self.log.warning("executor_still_busy", waited_seconds=round(time.monotonic() - started, 1))
        self.sampler.stop()
        server.shutdown()
        self.journal.set_state("current", None)
        self.journal.add_event("stop", {"clean": finished,
                                        "seconds": round(time.monotonic() - started, 2)})
        self.journal.close()
        self.log.info("stopped", seconds=round(time.monotonic() - started, 2))

    def _info(self) -> dict[str, str]:
        from importlib import metadata

        host = host_info()
        try:
            version = metadata.version("soakd")
        except metadata.PackageNotFoundError:
            version = "unknown"
        return {"chip": host["chip"], "machine": host["machine"], "os": host["os"],
                "os_version": host["os_version"], "python": host["python"], "torch": host["torch"],
                "coremltools": host["coremltools"], "version": version}

    # --- scheduling -----------------------------------------------------------------------

    def _trigger(self) -> Any:
        jitter = int(self.config.jitter_seconds) or None
        if self.config.cron:
            return CronTrigger.from_crontab(self.config.cron, timezone=timezone.utc)
        return IntervalTrigger(seconds=self.config.interval_seconds, jitter=jitter)

    def _schedule_rotations(self, first: bool) -> None:
        """(Re)schedule the rotation job; on start, continue the schedule the journal remembers."""
        next_run: datetime | None = None
        if first:
            stored = self.journal.get_state("next_rotation")
            if stored and stored[0]:
                next_run = datetime.fromtimestamp(float(stored[0]), tz=timezone.utc)
                now = datetime.now(timezone.utc)
                if next_run < now:  # missed while down: one rotation now, coalesced
                    next_run = now + timedelta(seconds=1)
            elif self.config.run_at_start:
                next_run = datetime.now(timezone.utc) + timedelta(seconds=1)
        kwargs: dict[str, Any] = {"id": "rotation", "max_instances": 1, "coalesce": True,
                                  "misfire_grace_time": int(self.config.misfire_grace_seconds),
                                  "replace_existing": True}
        if next_run is not None:
            kwargs["next_run_time"] = next_run
        self.scheduler.add_job(self._scheduled_rotation, self._trigger(), **kwargs)

    def _scheduled_rotation(self) -> None:
        self.executor.submit(Request("rotation", "schedule"))
        job = self.scheduler.get_job("rotation")
        if job is not None and job.next_run_time is not None:
            self.journal.set_state("next_rotation", job.next_run_time.timestamp())

    # --- signals --------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only note it: the handler runs between bytecodes of the main thread.
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop_event.set()
        self._signals.append(signum)
        self._wake.set()

    def _dispatch_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self.log.info("signal", signal=name)
        self.journal.add_event("signal", {"signal": name}, rotation_id=self._rotation_id)
        if signum == signal.SIGUSR1:
            self.executor.submit(Request("rotation", "signal"))
        elif signum == signal.SIGUSR2:
            self.executor.submit(Request("micro", "signal"))
        elif signum == signal.SIGHUP:
            self.reload()

    def reload(self) -> None:
        try:
            new = load_config(self._config_path, flags=self._flags)
        except ConfigError as exc:
            self.log.error("config_rejected", error=str(exc), kept=str(self._config_path))
            self.journal.add_event("error", {"what": "config reload rejected", "error": str(exc)})
            return
        restart_needed = [k for k in ("listen", "state_dir") if getattr(new, k) != getattr(self.config, k)]
        self.config = new
        self._schedule_rotations(first=False)
        self.log.info("config_reloaded", restart_needed_for=restart_needed or None)
        self.journal.add_event("config_reloaded", {"restart_needed_for": restart_needed})

    # --- requests -------------------------------------------------------------------------

    def _handle_request(self, request: Request) -> None:
        if request.kind == "micro":
            self._run_micro()
        else:
            self.run_rotation(request.trigger)

    def run_rotation(self, trigger: str) -> None:
        """Run one rotation now (on the executor thread), journaled and measured."""
        config = self.config
        if self.stop_event.is_set():
            return
        skip = heavy_skip_reason(config.profile)
        if skip:
            rid = self.journal.start_rotation(config.profile, trigger, config.backends)
            self.journal.end_rotation(rid, "skipped", skip)
            self.metrics.rotation_finished("skipped", 0.0)
            self.log.warning("rotation_skipped", reason=skip)
            return
        plan = plan_from_config(config)
        started = time.monotonic()
        self._rotation_id = self.journal.start_rotation(plan.profile.name, trigger, ",".join(plan.backends))
        self.recorder.begin(self._rotation_id, plan)
        self.log.info("rotation_start", rotation=self._rotation_id, trigger=trigger,
                      profile=plan.profile.name, backends=plan.backends)
        result, detail = "completed", ""
        try:
            RotationRunner(plan, self.recorder.on_event, self.stop_event).run()
            if self.stop_event.is_set():
                result = "stopped"
        except Exception as exc:  # a broken rotation is recorded; the service goes on
            result, detail = "failed", f"{type(exc).__name__}: {exc}"
            self.log.exception("rotation_failed", rotation=self._rotation_id)
        seconds = time.monotonic() - started
        self.journal.end_rotation(self._rotation_id, result, detail)
        self.journal.set_state("current", None)
        self.metrics.rotation_finished(result, seconds)
        self.log.info("rotation_end", rotation=self._rotation_id, result=result,
                      seconds=round(seconds, 2))
        self.recorder.end()
        self._rotation_id = None

    def _run_micro(self) -> None:
        from workloads.micro.run import run_micro_in_worker

        self.log.info("micro_start", profile=self.config.micro_profile)
        try:
            outcome = run_micro_in_worker(parse_backends(self.config.micro_backends),
                                          profile=self.config.micro_profile, stop=self.stop_event)
        except Exception as exc:
            self.log.exception("micro_failed")
            self.journal.add_event("error", {"what": "micro-benchmark failed", "error": str(exc)})
            return
        document = outcome.to_dict()
        self.metrics.micro_results(outcome.results)
        self.journal.add_micro_run(self.config.micro_profile, document["summary"], document["results"])
        self.log.info("micro_end", results=len(outcome.results), stopped=outcome.stopped,
                      summary=document["summary"])

    # --- watch: throttles, sources, telemetry rows ----------------------------------------

    def _watch(self) -> None:
        snap = self.sampler.snapshot()
        throttles = sum(snap.throttle_events_total.values())
        level = snap.thermal_pressure
        escalated = level not in (None, "nominal") and level != self._last_level
        self.metrics.throttle_state(bool(snap.throttle_active), snap.throttle_known)
        if (throttles > self._last_throttles and self._last_throttles) or escalated:
            self.journal.add_event("throttle", {"events_total": throttles, "thermal_pressure": level},
                                   rotation_id=self._rotation_id)
        self._last_throttles = throttles
        self._last_level = level
        changed = self._journal_telemetry(snap)
        for name, health in snap.health.items():
            if self._last_health.get(name) != health.up:
                kind = "source_up" if health.up else "source_down"
                self.journal.add_event(kind, {"reason": health.reason, "error": health.last_error},
                                       source=name)
                self.log.info(kind, source=name, reason=health.reason or None)
                self._last_health[name] = health.up
                changed = True
        now = time.time()
        if self._rotation_id is not None and now - self._last_telemetry >= TELEMETRY_EVERY_S:
            self._last_telemetry = now
            power: dict[str, float] = {}
            for (_source, component), watts in snap.power_watts.items():
                power[component] = power.get(component, 0.0) + watts
            temps = {f"{s}/{n}": c for (s, n), c in snap.temperatures_celsius.items()}
            self.journal.add_telemetry(now, self._rotation_id, power, level, temps)
        if changed:  # `soakd status` reads this; no write while nothing changes
            self.journal.set_state("sources", {name: {"up": h.up, "reason": h.reason}
                                               for name, h in snap.health.items()})

    def _journal_telemetry(self, snap: Any) -> bool:
        """Journal and log each new telemetry event of the sampler once (device health, hardware
        errors, skipped readings, energy counter resets, gaps, the whole-system energy plan),
        tagged with the rotation and the phase running when it is journaled (the sampler
        stamps `monotonic` for a finer match). True when a device changed state."""
        devices_changed = False
        phase = self.recorder.progress.phase if self._rotation_id is not None else None
        for event in snap.events:
            if event.seq <= self._last_event_seq:
                continue
            self._last_event_seq = event.seq
            detail = {**event.detail, "device": event.device, "phase": phase}
            self.journal.add_event(event.kind, detail, source=event.source, rotation_id=self._rotation_id)
            warn = event.kind in ("device_down", "hardware_error", "reading_unavailable", "energy_reset")
            (self.log.warning if warn else self.log.info)(event.kind, source=event.source, **detail)
            devices_changed |= event.kind in ("device_down", "device_up")
        return devices_changed


def _finite(value: float) -> float | None:
    return value if value == value and value not in (float("inf"), float("-inf")) else None
