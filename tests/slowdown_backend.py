"""A stand-in backend whose steps get slower partway through a phase, with nothing in the
telemetry to say why: the unexplained slowdown the verdicts must find (issue 16).

Registered through the SOAKD_EXTRA_BACKENDS hook (`fake_backends.register`, or the
environment of a real `soakd run`). It is the real CPU backend with every step padded to a fixed
pace, so its throughput is known and steady whatever else the machine runs (and it takes little
CPU): PACE_S a step for the worker's first FAST_STEPS steps, SLOW_PACE_S after (1/3 lower
throughput). A worker serves one phase, so each phase starts fast again.
"""

from __future__ import annotations

import time

from fake_backends import _as

from workloads.backends.base import PreparedWorkload, PrepareOptions
from workloads.backends.torch_backend import CpuBackend, TorchWorkload
from workloads.phases import PhaseSpec

PACE_S = 0.02
SLOW_PACE_S = 0.03
FAST_STEPS = 60  # warm-up included


class _SlowingWorkload(TorchWorkload):
    steps_done = 0

    def step(self) -> None:
        started = time.perf_counter()
        super().step()
        pace = PACE_S if _SlowingWorkload.steps_done < FAST_STEPS else SLOW_PACE_S
        _SlowingWorkload.steps_done += 1
        time.sleep(max(0.0, pace - (time.perf_counter() - started)))


class SlowdownBackend(CpuBackend):
    """The CPU backend, paced: 50 steps/s for its first FAST_STEPS steps, then 33 steps/s."""

    name = "slowdown-fake"

    def prepare(self, spec: PhaseSpec, precision: str, seed: int,
                options: PrepareOptions | None = None) -> PreparedWorkload:
        return _as(super().prepare(spec, precision, seed, options), _SlowingWorkload)
