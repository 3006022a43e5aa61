"""Failure reasons: an out-of-memory is `out_of_memory` on every backend, whatever words it uses."""

from __future__ import annotations

import pytest
import torch

from workloads.backends.base import BackendFailure, classify_failure


@pytest.mark.parametrize("exc", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    OSError(12, "Cannot allocate memory"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
    MemoryError(),
    RuntimeError("Error computing NN outputs: insufficient memory for the Neural Engine"),
], ids=["cpu-allocator", "enomem", "cuda", "mps", "python", "coreml"])
def test_every_out_of_memory_is_classified_as_such(exc: BaseException) -> None:
    """A CPU worker's "can't allocate memory" was once recorded as runtime_error."""
    assert classify_failure(exc).reason == "out_of_memory"


def test_other_failures_keep_their_reasons() -> None:
    assert classify_failure(RuntimeError("\"addmm\" not implemented for 'Half'")).reason == "unsupported_precision"
    assert classify_failure(ValueError("shape mismatch")).reason == "runtime_error"
    failure = BackendFailure("conversion_failed", "op frobnicate")
    assert classify_failure(failure) is failure
