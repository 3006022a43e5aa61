"""Backends that misbehave on purpose, for the runner and rotation tests.

They are registered through the `SOAKD_EXTRA_BACKENDS="name=module:Class,..."` hook read by
`workloads.backends.get_backend`. The hook lives in the environment, so a spawned worker (which
inherits the environment and the parent's sys.path) resolves the same names; a monkeypatched
registry would not reach it.

Each is the real CPU backend with one thing changed, so whatever it does not break runs the
real phase model.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from workloads.backends import EXTRA_BACKENDS_ENV
from workloads.backends.base import Availability, PreparedWorkload, PrepareOptions
from workloads.backends.torch_backend import CpuBackend, TorchWorkload
from workloads.phases import PhaseSpec

# A file the hanging backend writes its worker's pid to, so a test can check the worker died.
PID_FILE_ENV = "SOAKD_TEST_PID_FILE"


def register(monkeypatch: pytest.MonkeyPatch, **backends: type[CpuBackend]) -> None:
    """Make `name=Class` pairs resolvable by get_backend here and in spawned workers."""
    entries = [f"{name}={cls.__module__}:{cls.__qualname__}" for name, cls in backends.items()]
    monkeypatch.setenv(EXTRA_BACKENDS_ENV, ",".join(entries))


def _as(workload: PreparedWorkload, cls: type[TorchWorkload]) -> TorchWorkload:
    """The same prepared workload (model, inputs, clock) with another class's step()."""
    return cls(**{f.name: getattr(workload, f.name) for f in fields(workload)})


class PlainBackend(CpuBackend):
    """The CPU backend under another name (for tests that need two healthy backends)."""

    name = "plain"


class UnavailableBackend(CpuBackend):
    name = "unavailable-fake"

    def available(self) -> Availability:
        return Availability.no("fake accelerator is not installed on this host")


class NoHalfBackend(CpuBackend):
    """Says up front that it does not run fp16."""

    name = "nohalf-fake"

    def supports(self, precision: str) -> Availability:
        if precision == "fp16":
            return Availability.no("fake accelerator has no fp16 units")
        return super().supports(precision)


class _KillingWorkload(TorchWorkload):
    def step(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class KillerBackend(CpuBackend):
    """Its first step SIGKILLs the process, like an ANE load failure (coremltools#2758)."""

    name = "killer-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _KillingWorkload)


# A file the crash-once backend creates on its first crash: later workers find it and run.
CRASH_MARKER_ENV = "SOAKD_TEST_CRASH_MARKER"


class _CrashOnceWorkload(TorchWorkload):
    def step(self) -> None:
        marker = Path(os.environ[CRASH_MARKER_ENV])
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        super().step()


class CrashOnceBackend(CpuBackend):
    """The first worker that steps dies by SIGKILL (a native crash); every later one is fine."""

    name = "crashonce-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _CrashOnceWorkload)


class _HangingWorkload(TorchWorkload):
    def step(self) -> None:
        path = os.environ.get(PID_FILE_ENV)
        if path:
            Path(path).write_text(str(os.getpid()))
        time.sleep(3600)


class HangingBackend(CpuBackend):
    """Its first step never ends."""

    name = "hanging-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _HangingWorkload)


class SlowPrepareBackend(CpuBackend):
    """Preparing takes an hour (a model build or compile that never finishes)."""

    name = "slowprepare-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        time.sleep(3600)
        return super().prepare(spec, precision, seed, options)


class _OomWorkload(TorchWorkload):
    def step(self) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")


class OomBackend(CpuBackend):
    """Prepares fine, then every step runs out of device memory."""

    name = "oom-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _OomWorkload)


class _HalfRefusingWorkload(TorchWorkload):
    def step(self) -> None:
        if self.precision == "fp16":
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")
        super().step()


class HalfRefusingBackend(CpuBackend):
    """Claims fp16 but fails at the first fp16 step, the way torch reports a missing kernel."""

    name = "halfrefusing-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _HalfRefusingWorkload)


PERTURBATION = 0.05


class _PerturbingWorkload(TorchWorkload):
    def step(self) -> None:
        super().step()
        assert self.last_output is not None
        self.last_output = self.last_output * (1.0 + PERTURBATION)


class PerturbingBackend(CpuBackend):
    """Computes the real model, then scales its output by 1.05: 5% off the reference."""

    name = "perturbing-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _PerturbingWorkload)


class _SlowStepWorkload(TorchWorkload):
    def step(self) -> None:
        super().step()
        time.sleep(SLOW_STEP_S)


# The extra time a step of the slow stand-in GPU takes.
SLOW_STEP_S = 0.004


class DeviceLikeBackend(CpuBackend):
    """Steps that leave the host mostly idle, as a GPU's do (each waits 4 ms after a small CPU
    step): what runs beside it (a worker preparing ahead) gets the CPU."""

    name = "devicelike-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _SlowStepWorkload)


# How long the slow-warm-up stand-in's warm-up takes (as a CUDA graph capture does, in the phase).
SLOW_WARMUP_S = 1.5


class _SlowWarmupWorkload(_SlowStepWorkload):
    def warm_up(self, steps: int, now: Callable[[], float] = time.perf_counter) -> float:
        time.sleep(SLOW_WARMUP_S)
        return super().warm_up(steps, now)


class SlowWarmupBackend(CpuBackend):
    """The stand-in GPU of DeviceLikeBackend (steps that mostly wait, so a busy host hardly
    changes them) whose warm-up takes SLOW_WARMUP_S longer."""

    name = "slowwarmup-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _SlowWarmupWorkload)


class MultiDeviceBackend(CpuBackend):
    """Three stand-in GPUs (devices "0", "1", "2"), each the CPU; device "2" is slow."""

    name = "multi-fake"

    def devices(self) -> tuple[str, ...]:
        return ("0", "1", "2")

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        workload = super().prepare(spec, precision, seed, options)
        if options is not None and options.device == "2":
            return _as(workload, _SlowStepWorkload)
        return workload


# How much a step of the spiky backend allocates and frees again (bytes).
SPIKE_BYTES = 600 * 2**20


class _SpikyWorkload(TorchWorkload):
    def step(self) -> None:
        super().step()
        buffer = torch.ones(SPIKE_BYTES // 4, dtype=torch.float32)  # touched: resident
        del buffer


class SpikyBackend(CpuBackend):
    """Each step holds 600 MiB for a moment and frees it: RSS sampled between steps misses it."""

    name = "spiky-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _SpikyWorkload)


# Every step of the paced stand-in takes this long, compute included (the example: every
# step at exactly 0.3 s, which the histogram's 0.25-0.5 s bucket read as p50 0.375 s).
PACED_STEP_S = 0.3


class _PacedWorkload(TorchWorkload):
    def step(self) -> None:
        started = time.perf_counter()
        super().step()
        time.sleep(max(0.0, PACED_STEP_S - (time.perf_counter() - started)))


class PacedBackend(CpuBackend):
    """The CPU backend with every step padded to PACED_STEP_S: a steady, known throughput and
    latency whatever else the machine runs, and almost no CPU taken from the other lane."""

    name = "paced-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _PacedWorkload)
