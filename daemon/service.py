"""`soakd run`: the long-running service.

Threads: the main thread handles signals and waits; the sampler has its own thread;
APScheduler's threads only *request* rotations (and beat the heartbeat /healthz reads); one
executor thread runs requests (rotations and micro-benchmarks) one at a time, each slice in a
child worker; waitress' threads serve /metrics and /healthz from cached state. Nothing here
runs a workload step itself.

Start-up, in order: signal handlers (before anything else, daemon/signals.py), the state
directory's lock (daemon/instance.py), the journal, the sampler, the HTTP server, the executor,
the scheduler; a stop requested on the way ends it there, cleanly. Anything that cannot start
is a `StartupError`: one line and exit 78 (75 when another process holds the directory or the
journal's lock). Shutdown undoes the steps in reverse order.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry

from daemon import schedule, signals
from daemon.autoprofile import ProfileChoice, choose_profile
from daemon.config import Config, ConfigError, heavy_skip_reason, load_config
from daemon.exporter import SnapshotCollector, WorkloadMetrics
from daemon.health import DaemonCollector, Liveness
from daemon.health import health as health_document
from daemon.http_server import MetricsApp, MetricsServer
from daemon.instance import EX_TEMPFAIL, InstanceLock, StartupError
from daemon.journal import JournalError, JournalLocked, open_for_daemon
from daemon.log import get_logger
from daemon.phase_verdicts import VerdictSettings
from daemon.recorder import Recorder, plan_from_config
from daemon.records import TelemetryRow
from daemon.sampler import Sampler, default_sources
from workloads.backends import auto_candidates, parse_backends, resolve_backends
from workloads.host import host_info
from workloads.process import probe
from workloads.protocol import ProbeResult
from workloads.rotation import RotationRunner

STOP_TIMEOUT_S = 8.0  # the executor gets this long after SIGTERM; exit stays under 10 s
TELEMETRY_EVERY_S = 10.0  # journal a telemetry row this often during rotations


@dataclass
class Request:
    """One unit of work for the executor: what to run and what asked for it."""
    kind: str  # rotation | micro | profile (choose it, before the first rotation)
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
        """Start the executor thread."""
        self._thread.start()

    def submit(self, request: Request) -> bool:
        """Queue `request`; False when the executor is closed or one of its kind already waits."""
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
        """The request running now, or None."""
        return self._busy

    @property
    def alive(self) -> bool:
        """Whether the executor thread is still running."""
        return self._thread.is_alive()

    def close(self, timeout: float) -> bool:
        """Drop waiting requests, let the running one finish for up to `timeout` seconds; True when
        the thread ended."""
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
    """The daemon: journal, sampler, HTTP server, executor and scheduler, started in that order
    by `run()` and stopped in reverse. Signals arrive through `inbox` (daemon/signals.py).
    """
    def __init__(self, config: Config, config_path: Path | None, flags: dict[str, Any],
                 sampler_factory: Callable[[Config], Sampler] | None = None,
                 inbox: signals.SignalInbox | None = None) -> None:
        self.config = config
        self._config_path = config_path
        self._flags = flags
        self.log = get_logger()
        self.inbox = inbox or signals.install()
        self.stop_event = self.inbox.stop  # SIGTERM/SIGINT set it, from the first instant
        self._sampler_factory = sampler_factory or (
            lambda c: Sampler(default_sources(c.sources), interval_s=c.sampler_interval_seconds))
        self._rotation_id: int | None = None
        self._last_throttles = 0
        self._last_level: str | None = None
        self._last_health: dict[str, bool] = {}
        self._last_telemetry = 0.0
        self._last_event_seq = 0
        self._choice: ProfileChoice | None = None  # the profile rotations run (daemon/autoprofile.py)
        self._stage = "starting"  # starting | running | stopping
        self._started = time.monotonic()
        self._ready_at = float("inf")  # monotonic time start-up finished
        self._heartbeat_at: float | None = None
        self._next_rotation: float | None = None  # unix time
        self._written_next_rotation: float | None = None
        self._schedule_key: tuple[Any, ...] | None = None
        self._interrupted = 0
        self._executor_finished = True
        self.listen_address = config.listen
        self._instance = InstanceLock(config.state_dir)

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then return 0. Raises StartupError (one line, and the
        exit code to leave with) when the daemon cannot start."""
        self._instance.acquire()
        try:
            return self._serve()
        finally:
            self._instance.release()

    def _serve(self) -> int:
        steps = (self._open_journal, self._start_sampler, self._start_http, self._start_executor,
                 self._start_scheduler)
        with contextlib.ExitStack() as stack:
            for step in steps:
                if self.stop_event.is_set():
                    self.log.info("stop_requested_during_startup", next_step=step.__name__.strip("_"),
                                  signals_ignored=self.inbox.names(self.inbox.take()))
                    break
                step(stack)
            else:
                self._stage = "running"
                self._ready_at = time.monotonic()
                self.log.info("ready", startup_seconds=round(self._ready_at - self._started, 2))
                self._loop()
            self._stage = "stopping"
            stopping = time.monotonic()
            self.log.info("stopping")
        self.log.info("stopped", seconds=round(time.monotonic() - stopping, 2))
        return 0

    def _loop(self) -> None:
        self._dispatch_signals()  # those that arrived during start-up
        while not self.stop_event.is_set():
            self.inbox.wake.wait(1.0)
            self.inbox.wake.clear()
            self._dispatch_signals()

    def _open_journal(self, stack: contextlib.ExitStack) -> None:
        config = self.config
        try:
            opened = open_for_daemon(config.journal_path)
        except JournalError as exc:
            raise StartupError(str(exc), EX_TEMPFAIL if isinstance(exc, JournalLocked) else 78) from None
        self.journal = opened.journal
        if opened.moved_to is not None:
            self.log.warning("journal_corrupt_moved_aside", moved_to=str(opened.moved_to),
                             error=opened.corrupt_reason, new_journal=str(config.journal_path))
        try:
            self._interrupted = self.journal.start_session({
                "pid": os.getpid(), "profile": config.profile,
                "config": str(config.source_path) if config.source_path else None})
        except JournalError as exc:
            self.journal.close()
            raise StartupError(str(exc), EX_TEMPFAIL if isinstance(exc, JournalLocked) else 78) from None
        stack.callback(self._close_journal)
        if opened.moved_to is not None:
            self.journal.add_event("journal_replaced", {"moved_to": str(opened.moved_to),
                                                        "error": opened.corrupt_reason})
        if self._interrupted:
            self.log.warning("interrupted_rotations", count=self._interrupted)

    def _close_journal(self) -> None:
        self.journal.set_state("current", None)
        self.journal.add_event("stop", {"clean": self._executor_finished,
                                        "seconds": round(time.monotonic() - self._started, 2)})
        self.journal.close()

    def _start_sampler(self, stack: contextlib.ExitStack) -> None:
        self.sampler = self._sampler_factory(self.config)
        self.sampler.start()
        stack.callback(self.sampler.stop)

    def _start_http(self, stack: contextlib.ExitStack) -> None:
        config = self.config
        self.registry = CollectorRegistry()
        self.metrics = WorkloadMetrics(self.registry)
        self.recorder = Recorder(self.journal, self.metrics, self.sampler, self.log)
        # Rotations a crash left open, counted once, by the run that finds them.
        self.metrics.rotations.labels(result="interrupted").inc(self._interrupted)
        self.registry.register(SnapshotCollector(self.sampler.snapshot, self._info(),
                                                 lambda: dict(self.metrics.worker_memory)))
        self.registry.register(DaemonCollector(self.journal.stats, lambda: self._next_rotation))
        self.server = MetricsServer(MetricsApp(self.registry, self.health), config.listen_host,
                                    config.listen_port, config.http_idle_timeout_seconds,
                                    config.http_max_connections)
        self.listen_address = self.server.start()
        stack.callback(self.server.stop)
        self.journal.set_state("daemon", {"pid": os.getpid(), "listen": self.listen_address,
                                          "started_at": time.time()})
        self.log.info("listening", address=f"http://{self.listen_address}/metrics",
                      healthz=f"http://{self.listen_address}/healthz", state_dir=str(config.state_dir),
                      profile=config.profile,
                      config=str(config.source_path) if config.source_path else None)

    def _start_executor(self, stack: contextlib.ExitStack) -> None:
        self.executor = Executor(self._handle_request, self.log)
        self.executor.start()
        self.executor.submit(Request("profile", "start"))  # say at start which profile runs, and why
        stack.callback(self._stop_executor)

    def _stop_executor(self) -> None:
        started = time.monotonic()
        self._executor_finished = self.executor.close(STOP_TIMEOUT_S)
        if not self._executor_finished:
            self.log.warning("executor_still_busy", waited_seconds=round(time.monotonic() - started, 1))

    def _start_scheduler(self, stack: contextlib.ExitStack) -> None:
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.scheduler.add_job(self._watch, IntervalTrigger(seconds=1.0), id="watch",
                               max_instances=1, coalesce=True)
        self.scheduler.add_job(self._beat, IntervalTrigger(seconds=1.0), id="heartbeat",
                               max_instances=1, coalesce=True, next_run_time=datetime.now(timezone.utc))
        self._schedule_rotations()
        self.scheduler.start()
        stack.callback(self._stop_scheduler)

    def _stop_scheduler(self) -> None:
        with contextlib.suppress(Exception):  # already stopped
            self.scheduler.shutdown(wait=False)

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

    # --- health -----------------------------------------------------------------------------

    def _beat(self) -> None:
        """Every second on the scheduler: the heartbeat /healthz checks, the next rotation's time
        (journalled when it changes, for `soakd status`), a removed pid file put back."""
        self._heartbeat_at = time.monotonic()
        job = self.scheduler.get_job("rotation")
        upcoming = job.next_run_time.timestamp() if job is not None and job.next_run_time else None
        self._next_rotation = upcoming
        if upcoming != self._written_next_rotation:
            self._written_next_rotation = upcoming
            self.journal.set_state("next_rotation", upcoming)
        if self._instance.restore_pid_file():
            self.log.warning("pid_file_restored", path=str(self._instance.pid_path))

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, document) for /healthz, from cached state only (daemon/health.py)."""
        now = time.monotonic()
        executor: Executor | None = getattr(self, "executor", None)
        scheduler: BackgroundScheduler | None = getattr(self, "scheduler", None)
        busy = executor.busy if executor is not None else None
        live = Liveness(
            stage=self._stage, uptime_seconds=now - self._started, listen=self.listen_address,
            scheduler_running=bool(scheduler is not None and scheduler.running),
            heartbeat_age_seconds=now - self._heartbeat_at if self._heartbeat_at is not None else None,
            executor_alive=executor is not None and executor.alive, busy=busy.kind if busy else None,
            rotation_id=self._rotation_id, next_rotation=self._next_rotation)
        return health_document(live, self.sampler.snapshot(), self.journal.stats(),
                      self.config.sampler_interval_seconds, now)

    # --- scheduling -----------------------------------------------------------------------

    def _schedule_rotations(self) -> None:
        """(Re)schedule the rotation job from the last rotation's start (daemon/schedule.py);
        nothing changes when the schedule's settings did not."""
        config = self.config
        key = (config.interval_seconds, config.cron, config.jitter_seconds,
               config.misfire_grace_seconds, config.run_at_start)
        if key == self._schedule_key:
            return
        last = self.journal.last_rotation_start()
        plan = schedule.first_rotation(datetime.now(timezone.utc),
                                       datetime.fromtimestamp(last, tz=timezone.utc) if last else None,
                                       config.interval_seconds, config.cron, config.run_at_start)
        self.scheduler.add_job(
            self._scheduled_rotation,
            schedule.trigger(config.interval_seconds, config.cron, config.jitter_seconds, plan.first),
            id="rotation", max_instances=1, coalesce=True, replace_existing=True,
            misfire_grace_time=int(config.misfire_grace_seconds), next_run_time=plan.first)
        self._schedule_key = key
        self._next_rotation = plan.first.timestamp()
        self._written_next_rotation = self._next_rotation
        self.journal.set_state("next_rotation", self._next_rotation)
        self.log.info("schedule", next_rotation=plan.first.isoformat(timespec="seconds"), reason=plan.reason,
                      every=config.cron or f"{config.interval_seconds:g} s")

    def _scheduled_rotation(self) -> None:
        self.executor.submit(Request("rotation", "schedule"))

    # --- signals --------------------------------------------------------------------------

    def _dispatch_signals(self) -> None:
        for signum, received in self.inbox.take():
            name = signal.Signals(signum).name
            early = received < self._ready_at
            self.log.info("signal", signal=name, **({"received_during_startup": True} if early else {}))
            self.journal.add_event("signal", {"signal": name, **({"during_startup": True} if early else {})},
                                   rotation_id=self._rotation_id)
            if signum == signal.SIGUSR1:
                self.executor.submit(Request("rotation", "signal"))
            elif signum == signal.SIGUSR2:
                self.executor.submit(Request("micro", "signal"))
            elif signum == signal.SIGHUP:
                self.reload()

    def reload(self) -> None:
        """SIGHUP: load the config again; a bad one is refused (logged, journalled) and the old
        one kept, schedule included."""
        try:
            new = load_config(self._config_path, flags=self._flags)
        except ConfigError as exc:
            self._reject(str(exc))
            return
        old, self.config = self.config, new
        try:
            self._schedule_rotations()
        except Exception as exc:  # validated, yet the scheduler refuses it: keep the old one
            self.config = old
            self._reject(f"{type(exc).__name__}: {exc}")
            return
        restart_needed = [k for k in ("listen", "state_dir", "http_idle_timeout_seconds", "http_max_connections")
                          if getattr(new, k) != getattr(old, k)]
        self._choice = None  # the profile is chosen again for the new config
        self.log.info("config_reloaded", restart_needed_for=restart_needed or None)
        self.journal.add_event("config_reloaded", {"restart_needed_for": restart_needed})

    def _reject(self, error: str) -> None:
        self.log.error("config_rejected", error=error, kept=str(self._config_path))
        self.journal.add_event("error", {"what": "config reload rejected", "error": error})

    # --- requests -------------------------------------------------------------------------

    def _handle_request(self, request: Request) -> None:
        if request.kind == "profile":
            self._profile_choice()
        elif request.kind == "micro":
            self._run_micro()
        else:
            self.run_rotation(request.trigger)

    def _profile_choice(self) -> ProfileChoice:
        """The profile rotations run (chosen once per config: `auto` probes the backends in a
        worker, daemon/autoprofile.py), said in the log, the journal's state and the metrics."""
        if self._choice is not None:
            return self._choice
        config = self.config
        backends = parse_backends(config.backends)
        if "auto" in backends and config.profile == "auto":
            answer, _ = probe(auto_candidates(), ("fp32",))
            backends = resolve_backends(backends, answer if isinstance(answer, ProbeResult) else ProbeResult({}))
        choice = choose_profile(config, backends)
        self._choice = choice
        self.log.info("profile", **choice.to_dict())
        if choice.fits is False:
            self.log.warning("rotation_exceeds_interval", estimate_seconds=round(choice.estimate_s),
                             interval_seconds=choice.interval_s, profile=choice.name)
        self.journal.set_state("profile", choice.to_dict())
        self.metrics.rotation_plan(choice.estimate_s, choice.interval_s, choice.fits)
        return choice

    def run_rotation(self, trigger: str) -> None:
        """Run one rotation now (on the executor thread), journaled and measured."""
        config = self.config
        if self.stop_event.is_set():
            return
        choice = self._profile_choice()
        skip = heavy_skip_reason(choice.name)
        if skip:
            rid = self.journal.start_rotation(choice.name, trigger, config.backends)
            self.journal.end_rotation(rid, "skipped", skip)
            self.metrics.rotation_finished("skipped", 0.0)
            self.log.warning("rotation_skipped", reason=skip)
            return
        plan = plan_from_config(config, choice.profile)
        conditions = self.recorder.conditions.before_rotation(config, self.stop_event, self.log)  # cool-down first
        started = time.monotonic()
        self._rotation_id = self.journal.start_rotation(plan.profile.name, trigger, ",".join(plan.backends))
        self.recorder.begin(self._rotation_id, plan, VerdictSettings.from_config(config), conditions)
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
        if result == "completed":
            self.metrics.rotation_measured(seconds, choice.interval_s)
            if choice.interval_s is not None and seconds > choice.interval_s:
                self.log.warning("rotation_exceeded_interval", seconds=round(seconds),
                                 interval_seconds=choice.interval_s, profile=choice.name)
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
            self.journal.add_telemetry(TelemetryRow(now, self._rotation_id, power, level, temps))
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
