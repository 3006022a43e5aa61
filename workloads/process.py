"""The one worker loop, and the parent's handle on a worker process.

A worker is a spawned child that serves many commands over a pipe (workloads/protocol.py):
`Prepare` once, then `RunSlice` after `RunSlice` on the same model, or `Probe`, or `RunMicro`.
Keeping it alive between slices is what keeps the device loaded at slice boundaries: a fresh
process per slice left an H200 idle 5-8 s at every boundary (measured 2026-11-30).

The parent (the daemon, `soakd once`) never runs a step itself. A worker killed by a signal,
one that overruns its slice, or one that dies in a native crash becomes a recorded `Failure`
here. `InProcessWorker` runs the same loop in the calling process, for tests.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from workloads.protocol import (
    BackendProbe,
    Command,
    Failure,
    MicroDone,
    MicroSkipped,
    Prepare,
    Prepared,
    Probe,
    ProbeResult,
    Ready,
    RunConfig,
    RunMicro,
    RunSlice,
    Shutdown,
    SliceDone,
    Stop,
    Warmup,
    WorkerEvent,
)

Deliver = Callable[[WorkerEvent], None]

# After a stop request, a worker whose current step is still running is killed after this long,
# so the daemon exits inside launchd's/systemd's stop timeout.
STOP_GRACE_S = 5.0
# A worker gets this much slack past its measured budget before it is killed as overrun.
OVERRUN_MARGIN_S = 30.0
# How long the parent waits for a worker to exit after `Shutdown` before it kills it.
SHUTDOWN_GRACE_S = 10.0
# Environment every worker gets: CUDA device indices in PCI bus order, as NVML numbers them,
# so that `device="1"` in a result and in NVML's telemetry is the same GPU.
WORKER_ENVIRONMENT: dict[str, str] = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


# --- the child's side ------------------------------------------------------------------------


def probe_backends(command: Probe) -> ProbeResult:
    """Ask each backend (in this process, which imports torch) whether it runs here."""
    from workloads.backends import get_backend

    out: dict[str, BackendProbe] = {}
    for name in command.backends:
        try:
            backend = get_backend(name)
            available = backend.available()
            precisions = {p: backend.supports(p) for p in command.precisions} if available.ok else {}
            devices = backend.devices() if available.ok else ()
        except Exception as exc:  # a backend whose probe itself breaks is unavailable
            from workloads.protocol import Availability

            available = Availability.no(f"probe failed: {type(exc).__name__}: {exc}")
            precisions, devices = {}, ()
        out[name] = BackendProbe(available, precisions, tuple(devices))
    return ProbeResult(out)


class WorkerState:
    """What a worker holds between commands: its prepared workload and reference progress."""

    def __init__(self) -> None:
        self.workload: Any = None
        self.check: Any = None  # workloads.measure.CheckState
        self.broken: Failure | None = None

    def handle(self, command: Command, emit: Deliver, should_stop: Callable[[], bool]) -> bool:
        """Carry out one command; False when the worker should exit."""
        if isinstance(command, Shutdown):
            self.close()
            return False
        if isinstance(command, Probe):
            emit(probe_backends(command))
        elif isinstance(command, Prepare):
            self.prepare(command, emit)
        elif isinstance(command, RunSlice):
            self.run_slice(command, emit, should_stop)
        elif isinstance(command, RunMicro):
            from workloads.micro.measure import measure_backend

            categories = command.categories or None
            kwargs = {"categories": categories} if categories else {}
            measure_backend(command.backend, command.profile, emit, command.dtype,
                            should_stop=should_stop, **kwargs)
        return True  # a Stop with nothing running is stale: ignore it

    def prepare(self, command: Prepare, emit: Deliver) -> None:
        """Build the model on the device (and the reference); `Prepared` or a `Failure`."""
        from pathlib import Path

        from workloads.backends import get_backend
        from workloads.backends.base import PrepareOptions, classify_failure
        from workloads.measure import CheckState, warm_up
        from workloads.reference import reference_output

        self.close()
        started = time.perf_counter()
        try:
            reference = None
            if command.check_every > 0:
                directory = Path(command.reference_dir) if command.reference_dir else None
                reference = reference_output(command.spec, command.seed, directory)
            backend = get_backend(command.backend)
            options = PrepareOptions(command.device, command.technique, command.memory_format)
            workload = backend.prepare(command.spec, command.precision, command.seed, options)
        except Exception as exc:
            failure = classify_failure(exc)
            self.broken = Failure(failure.reason, failure.detail, "prepare", traceback.format_exc(limit=8))
            emit(self.broken)
            return
        self.workload, self.check, self.broken = workload, CheckState(reference=reference), None
        prepare_seconds = time.perf_counter() - started
        warmed = None
        if command.warm_up_steps > 0:  # only while nothing else is measured on the device
            try:
                warmed = warm_up(workload, command.warm_up_steps, lambda _event: None)
            except Exception as exc:
                self._fail_run(exc, emit, stage="prepare")
                return
        # `run` after any warm-up: a CUDA graph that failed to capture is reported as eager
        assert workload.run is not None, f"backend {command.backend} prepared no run configuration"
        emit(Prepared(run=workload.run, device_name=workload.device_label,
                      prepare_seconds=prepare_seconds, warmed_up=warmed is not None,
                      info=dict(workload.info), ready_at=time.monotonic()))
        if warmed is not None:
            emit(warmed)

    def run_slice(self, command: RunSlice, emit: Deliver, should_stop: Callable[[], bool]) -> None:
        """One slice on the prepared model; a failure in a step breaks the worker for good."""
        from workloads.measure import measure

        if self.broken is not None or self.workload is None:
            failure = self.broken or Failure("worker_exit", "no prepared model: send Prepare first", "run")
            emit(failure)
            return
        try:
            before = self.workload.run
            measure(self.workload, command, _with_run(emit, before, self.workload), should_stop, self.check)
        except Exception as exc:
            self._fail_run(exc, emit, stage="run")

    def _fail_run(self, exc: BaseException, emit: Deliver, stage: str) -> None:
        from workloads.backends.base import classify_failure

        failure = classify_failure(exc)
        self.broken = Failure(failure.reason, failure.detail, stage, traceback.format_exc(limit=8))
        emit(self.broken)
        self.close()

    def close(self) -> None:
        """Release the device."""
        if self.workload is not None:
            with contextlib.suppress(Exception):
                self.workload.close()
        self.workload = None


def _with_run(emit: Deliver, before: Any, workload: Any) -> Deliver:
    """Attach the workload's run configuration to `Warmup` when warming up changed it."""

    def deliver(event: WorkerEvent) -> None:
        if isinstance(event, Warmup) and workload.run != before:
            from dataclasses import replace

            event = replace(event, run=workload.run)
        emit(event)

    return deliver


def worker_main(conn: Any, environment: Mapping[str, str]) -> None:
    """The child's entry point: answer commands from `conn` until `Shutdown` or a closed pipe.

    SIGINT is ignored: Ctrl-C at a terminal reaches the whole process group, and the parent
    decides what a stop means (it sends `Stop`, and prints one line).
    """
    os.environ.update(environment)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    state = WorkerState()
    queued: list[Command] = []
    stop = False

    def should_stop() -> bool:
        nonlocal stop
        while not stop and conn.poll():
            message = conn.recv()
            if isinstance(message, Stop | Shutdown):
                stop = True
            if not isinstance(message, Stop):
                queued.append(message)
        return stop

    try:
        conn.send(Ready(os.getpid()))
        while True:
            command = queued.pop(0) if queued else conn.recv()
            stop = False
            if not state.handle(command, conn.send, should_stop):
                break
    except (BrokenPipeError, EOFError, OSError):  # the parent went away: nothing to report to
        pass
    finally:
        state.close()
        with contextlib.suppress(OSError):
            conn.close()


# --- the parent's side -----------------------------------------------------------------------


def signal_name(code: int) -> str:
    """A signal number as its name (`SIGKILL`), or `signal N`."""
    try:
        return signal.Signals(code).name
    except ValueError:
        return f"signal {code}"




class Worker:
    """The parent's handle on one worker process (spawned, so CUDA and Metal start clean).

    `start()` spawns it without waiting; `prepare()` sends `Prepare` without waiting;
    `await_prepared()` and `run_slice()` block, delivering each event as it arrives, and turn
    a dead, killed, hung or overrunning worker into a `Failure`.

    `name` names the process (`soakd-worker-<name>`); `environment` is set in the child on
    top of `WORKER_ENVIRONMENT`.
    """

    def __init__(self, name: str, environment: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.environment = {**WORKER_ENVIRONMENT, **(environment or {})}
        self.process: Any = None
        self.conn: Any = None
        self.pid: int | None = None
        self.started_at = math.nan
        self.prepared: Prepared | None = None
        self.run: RunConfig | None = None  # how its slices run (a failed graph capture changes it)
        self.failure: Failure | None = None
        self._warm = False
        self.last_memory: Any = None  # the last MemorySample it reported
        self._pending: list[WorkerEvent] = []  # events read while polling for `Prepared`

    # -- lifecycle --

    def start(self) -> None:
        """Spawn the process (returns at once; the child imports torch in the background)."""
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=worker_main, args=(child, self.environment),
                                       daemon=True, name=f"soakd-worker-{self.name}")
        self.process.start()
        child.close()
        self.pid = self.process.pid
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        """The process is running."""
        return self.process is not None and self.process.is_alive()

    def age(self) -> float:
        """Seconds since `start()`."""
        return time.monotonic() - self.started_at

    def rss(self) -> int | None:
        """The worker's resident set in bytes, read from outside (None when it is gone)."""
        import psutil

        try:
            return int(psutil.Process(self.pid).memory_info().rss) if self.pid else None
        except (psutil.Error, OSError):
            return None

    def send(self, command: Command) -> None:
        """Send one command (a closed pipe is ignored: the next receive reports the death)."""
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(command)

    def receive(self, timeout: float) -> WorkerEvent | None:
        """The next event within `timeout` seconds, or None (nothing yet, or the pipe closed)."""
        if self._pending:
            return self._pending.pop(0)
        try:
            event: WorkerEvent | None = self.conn.recv() if self.conn.poll(timeout) else None
        except (EOFError, OSError):
            return None
        return event

    def kill(self) -> None:
        """Kill the process now and reap it."""
        if self.process is not None and self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> int | None:
        """Ask it to exit, kill it if it lingers, close the pipe; its exit code."""
        if self.process is None:
            return None
        if self.process.is_alive():
            self.send(Shutdown())
            self.process.join(grace_s)
        self.kill()
        with contextlib.suppress(OSError):
            self.conn.close()
        code: int | None = self.process.exitcode
        return code

    def death(self, stage: str) -> Failure:
        """The failure that describes a worker that ended without saying why."""
        self.process.join(5)
        code = self.process.exitcode
        if code is not None and code < 0:
            return Failure("killed", f"worker killed by {signal_name(-code)}", stage)
        return Failure("worker_exit", f"worker exited with code {code} before reporting a result", stage)

    # -- commands --

    def prepare(self, command: Prepare) -> None:
        """Send `Prepare` (the worker is started first if it is not running)."""
        if self.process is None:
            self.start()
        self.prepared, self.failure = None, None
        self.send(command)

    def poll_prepared(self, deliver: Deliver | None = None) -> bool:
        """Read what has arrived without waiting; True once `Prepared` (or a failure) is in."""
        while self.prepared is None and self.failure is None:
            event = self.receive(0)
            if event is None:
                if not self.alive:
                    self.failure = self.death("prepare")
                break
            self._note_prepare_event(event, deliver)
        return self.prepared is not None or self.failure is not None

    def await_prepared(self, timeout_s: float, stop: threading.Event | None = None,
                       deliver: Deliver | None = None) -> Prepared | Failure:
        """Wait for `Prepared`; a failure, a death, `timeout_s` or a stop become a `Failure`."""
        deadline = time.monotonic() + timeout_s
        while self.prepared is None and self.failure is None:
            if stop is not None and stop.is_set():
                self.kill()  # preparing has nothing worth saving
                self.failure = Failure("stopped", "a stop was requested while the worker prepared", "prepare")
                break
            event = self.receive(0.05)
            if event is not None:
                self._note_prepare_event(event, deliver)
            elif not self.alive:
                self.failure = self.death("prepare")
            elif time.monotonic() > deadline:
                self.kill()
                self.failure = Failure("overrun", f"worker did not finish preparing in {timeout_s:.0f} s "
                                                  "and was killed", "prepare")
        result = self.prepared or self.failure
        assert result is not None
        return result

    def _note_prepare_event(self, event: WorkerEvent, deliver: Deliver | None) -> None:
        if isinstance(event, Ready):
            return
        if isinstance(event, Prepared):
            self.prepared = event
            self.run = event.run
            self._warm = event.warmed_up
        elif isinstance(event, Failure):
            self.failure = event
        if deliver is not None:
            deliver(event)
        elif not isinstance(event, Prepared | Failure):
            self._pending.append(event)  # e.g. the Warmup of a warm preparation

    def request(self, command: Command, timeout_s: float) -> WorkerEvent:
        """Send one command and return the first event that is not `Ready` (probe answers)."""
        if self.process is None:
            self.start()
        self.send(command)
        deadline = time.monotonic() + timeout_s
        while True:
            event = self.receive(0.05)
            if event is not None and not isinstance(event, Ready):
                return event
            if event is None and not self.alive:
                return self.death("probe")
            if time.monotonic() > deadline:
                self.kill()
                return Failure("overrun", f"worker did not answer in {timeout_s:.0f} s", "probe")

    def run_slice(self, command: RunSlice, deliver: Deliver, stop: threading.Event | None = None,
                  overrun_margin_s: float = OVERRUN_MARGIN_S, stop_grace_s: float = STOP_GRACE_S,
                  warmup_timeout_s: float = 900.0) -> SliceDone | Failure:
        """Run one slice; every event is delivered; the last one (`SliceDone` or `Failure`) is
        returned. A stop is passed on (`Stop`), and a worker still busy `stop_grace_s` later is
        killed; a worker past its budget plus the larger of `overrun_margin_s` and the budget
        itself (plus `warmup_timeout_s` while a cold worker warms up) is killed as `overrun`.
        The budget is the slice's `duration_s`, or 3600 s for a slice of `max_steps`. All
        times in seconds."""
        self.send(command)
        started = time.monotonic()
        budget = command.duration_s if command.duration_s is not None else 3600.0
        deadline = started + budget + max(overrun_margin_s, budget) + (0.0 if self._warm else warmup_timeout_s)
        stop_sent: float | None = None
        while True:
            if stop is not None and stop.is_set() and stop_sent is None:
                self.send(Stop())
                stop_sent = time.monotonic()
            if stop_sent is not None and time.monotonic() - stop_sent > stop_grace_s:
                self.kill()
                failure = Failure("stopped", f"worker still busy {stop_grace_s:.0f} s after a stop "
                                             "request; killed", "run")
                deliver(failure)
                return failure
            event = self.receive(0.05)
            if event is not None:
                if isinstance(event, Warmup):
                    self._warm = True
                    self.run = event.run or self.run
                    deadline = time.monotonic() + budget + max(overrun_margin_s, budget)
                memory = getattr(event, "memory", None)
                if memory is not None:
                    self.last_memory = memory
                deliver(event)
                if isinstance(event, SliceDone | Failure):
                    if isinstance(event, Failure):
                        self.failure = event
                    return event
                continue
            if not self.alive:
                failure = self.death("run")
                deliver(failure)
                self.failure = failure
                return failure
            if time.monotonic() > deadline:
                self.kill()
                failure = Failure("overrun", f"worker overran its slice and was killed after "
                                             f"{time.monotonic() - started:.0f} s", "run")
                deliver(failure)
                self.failure = failure
                return failure

    def run_micro(self, command: RunMicro, deliver: Deliver, stop: threading.Event | None,
                  timeout_s: float) -> MicroDone | MicroSkipped | Failure:
        """Run the micro suite on one backend; like `run_slice`, for `RunMicro`."""
        self.send(command)
        deadline = time.monotonic() + timeout_s
        stop_sent: float | None = None
        while True:
            if stop is not None and stop.is_set() and stop_sent is None:
                self.send(Stop())
                stop_sent = time.monotonic()
            if stop_sent is not None and time.monotonic() - stop_sent > STOP_GRACE_S:
                self.kill()
                return Failure("stopped", "a stop was requested; the micro worker was killed", "run")
            event = self.receive(0.05)
            if event is not None:
                if isinstance(event, Ready):
                    continue
                deliver(event)
                if isinstance(event, MicroDone | MicroSkipped | Failure):
                    return event
                continue
            if not self.alive:
                return self.death("run")
            if time.monotonic() > deadline:
                self.kill()
                return Failure("overrun", f"the micro worker ran past {timeout_s:.0f} s and was killed", "run")


class InProcessWorker(Worker):
    """The same loop in this process (tests): no spawn, no pipe, the same events."""

    def __init__(self, name: str, environment: Mapping[str, str] | None = None) -> None:
        super().__init__(name, environment)
        self.state = WorkerState()
        self.pid = os.getpid()

    def start(self) -> None:
        """Nothing to spawn: only the start time is set."""
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        """Always True (this process)."""
        return True

    def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> int | None:
        """Release the workload; exit code 0."""
        self.state.close()
        return 0

    def prepare(self, command: Prepare) -> None:
        """Prepare now, in this process; the events wait for `await_prepared`/`poll_prepared`."""
        self.started_at = time.monotonic() if math.isnan(self.started_at) else self.started_at
        self.prepared, self.failure = None, None
        self.state.handle(command, self._pending.append, lambda: False)

    def receive(self, timeout: float) -> WorkerEvent | None:
        """The next waiting event, or None at once (`timeout` is not used)."""
        return self._pending.pop(0) if self._pending else None

    def request(self, command: Command, timeout_s: float) -> WorkerEvent:
        """Carry out `command` now and return its first event (no timeout)."""
        events: list[WorkerEvent] = []
        self.state.handle(command, events.append, lambda: False)
        return events[0]

    def run_slice(self, command: RunSlice, deliver: Deliver, stop: threading.Event | None = None,
                  overrun_margin_s: float = OVERRUN_MARGIN_S, stop_grace_s: float = STOP_GRACE_S,
                  warmup_timeout_s: float = 900.0) -> SliceDone | Failure:
        """Run the slice now, in this process, delivering every event; the last one is
        returned. Only `stop` applies (nothing here can be killed, so no time limit does)."""
        last: list[SliceDone | Failure] = []

        def emit(event: WorkerEvent) -> None:
            memory = getattr(event, "memory", None)
            if memory is not None:
                self.last_memory = memory
            if isinstance(event, Warmup) and event.run is not None:
                self.run = event.run
            deliver(event)
            if isinstance(event, SliceDone | Failure):
                last.append(event)

        self.state.handle(command, emit, lambda: stop is not None and stop.is_set())
        if isinstance(last[-1], Failure):
            self.failure = last[-1]
        return last[-1]

    def run_micro(self, command: RunMicro, deliver: Deliver, stop: threading.Event | None,
                  timeout_s: float) -> MicroDone | MicroSkipped | Failure:
        """Run the micro suite now, in this process; the last event is returned (no timeout)."""
        last: list[Any] = []

        def emit(event: WorkerEvent) -> None:
            deliver(event)
            last.append(event)

        self.state.handle(command, emit, lambda: stop is not None and stop.is_set())
        final: MicroDone | MicroSkipped | Failure = last[-1]
        return final


def probe(backends: tuple[str, ...], precisions: tuple[str, ...], in_process: bool = False,
          timeout_s: float = 120.0, keep: bool = False) -> tuple[ProbeResult | Failure, Worker | None]:
    """Which backends run here, asked of a worker (the caller need not import torch).

    With `keep` the worker is returned alive (it has imported torch already: a rotation
    prepares its first lane on it instead of starting another); else it is closed (None).
    """
    worker: Worker = InProcessWorker("probe") if in_process else Worker("probe")
    try:
        answer = worker.request(Probe(backends, precisions), timeout_s)
    finally:
        if not keep or not isinstance(answer, ProbeResult):
            worker.close()
    if not isinstance(answer, ProbeResult | Failure):
        answer = Failure("worker_exit", f"unexpected answer to a probe: {type(answer).__name__}", "probe")
    return answer, (worker if keep and isinstance(answer, ProbeResult) else None)
