"""The suite's cases: each op at each size, with its FLOP and byte counts (see the package
docstring for the counting rules)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from workloads.micro.results import (
    CATEGORIES,
    GELU_FLOP_PER_ELEMENT,
    MATMUL_SIZES,
    RELU_FLOP_PER_ELEMENT,
    VECTOR_SIZES,
    size_label,
)


@dataclass(frozen=True)
class MicroCase:
    """One op at one size: its counts and a `setup()` that allocates and returns the op."""

    category: str
    op: str  # stable id: matmul, add, mul, sum, h2d, d2h, relu, gelu, launch
    label: str  # what the table shows in its Operation column
    size: str  # what the table shows in its Size column: "1024x1024", "1M"
    n: int  # matrix dimension for matmul, element count otherwise
    flop: int
    bytes: int
    setup: Callable[[], Callable[[], object]]
    flop_estimated: bool = False
    sync_each: bool = False  # synchronise after every iteration (launch overhead)
    note: str = ""

# --- the cases -------------------------------------------------------------------------


def build_cases(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    categories: Sequence[str] = CATEGORIES,
    seed: int = 0,
) -> Iterator[MicroCase]:
    """The suite's cases in table order; tensors are allocated only when a case's `setup()` runs.

    A generator: an unknown name in `categories` raises ValueError when iteration reaches it.
    """
    size_of = torch.empty((), dtype=dtype).element_size()
    is_cpu = device.type == "cpu"
    pin = device.type == "cuda"

    def randn(*shape: int, salt: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + 7919 * salt + sum(shape))
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    def host(n: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed + n)
        tensor = torch.randn(n, generator=generator).to(dtype)
        return tensor.pin_memory() if pin else tensor

    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r} (choose from {', '.join(CATEGORIES)})")
        if category == "matmul":
            for n in MATMUL_SIZES:
                def mm_setup(n: int = n) -> Callable[[], object]:
                    a, b = randn(n, n), randn(n, n, salt=1)
                    c = torch.empty(n, n, device=device, dtype=dtype)
                    return lambda: torch.mm(a, b, out=c)
                yield MicroCase(category, "matmul", "MatMul", f"{n}x{n}", n, 2 * n**3,
                                3 * n * n * size_of, mm_setup)
        elif category == "elementwise":
            for op, label, fn in (("add", "Add", torch.add), ("mul", "Mul", torch.mul)):
                for n in VECTOR_SIZES:
                    def ew_setup(n: int = n, fn: Any = fn) -> Callable[[], object]:
                        a, b = randn(n), randn(n, salt=1)
                        c = torch.empty(n, device=device, dtype=dtype)
                        return lambda: fn(a, b, out=c)
                    yield MicroCase(category, op, label, size_label(n), n, n, 3 * n * size_of,
                                    ew_setup)
        elif category == "reduction":
            for n in VECTOR_SIZES:
                def sum_setup(n: int = n) -> Callable[[], object]:
                    a = randn(n)
                    out = torch.empty((), device=device, dtype=dtype)
                    return lambda: torch.sum(a, dim=0, out=out)
                yield MicroCase(category, "sum", "Sum", size_label(n), n, n - 1,
                                (n + 1) * size_of, sum_setup)
        elif category == "transfer":
            note = ("cpu: host and device are the same memory; this is a memcpy "
                    "(copy_ between two CPU tensors)") if is_cpu else (
                    "pinned host memory, non_blocking copy" if pin else "pageable host memory")
            suffix = " (memcpy)" if is_cpu else ""
            for n in VECTOR_SIZES:
                def h2d_setup(n: int = n) -> Callable[[], object]:
                    src = host(n)
                    dst = torch.empty(n, device=device, dtype=dtype)
                    return lambda: dst.copy_(src, non_blocking=pin)
                yield MicroCase(category, "h2d", "Host->Device" + suffix, size_label(n), n, 0,
                                n * size_of, h2d_setup, note=note)
            for n in VECTOR_SIZES:
                def d2h_setup(n: int = n) -> Callable[[], object]:
                    src = randn(n)
                    dst = torch.empty(n, dtype=dtype, pin_memory=pin)
                    return lambda: dst.copy_(src, non_blocking=pin)
                yield MicroCase(category, "d2h", "Device->Host" + suffix, size_label(n), n, 0,
                                n * size_of, d2h_setup, note=note)
        elif category == "activation":
            for n in VECTOR_SIZES:
                def relu_setup(n: int = n) -> Callable[[], object]:
                    x = randn(n)
                    y = torch.empty(n, device=device, dtype=dtype)
                    # torch.relu is clamp_min(x, 0) inside; aten.relu.out (where it exists) is
                    # composite (a temporary, then a copy) and ~2x slower on a CPU.
                    return lambda: torch.clamp_min(x, 0.0, out=y)
                yield MicroCase(category, "relu", "ReLU", size_label(n), n,
                                RELU_FLOP_PER_ELEMENT * n, 2 * n * size_of, relu_setup,
                                note="ReLU: clamp_min(x, 0, out=y), 1 FLOP per element")
            for n in VECTOR_SIZES:
                def gelu_setup(n: int = n) -> Callable[[], object]:
                    x = randn(n)
                    y = torch.empty(n, device=device, dtype=dtype)
                    return lambda: torch.ops.aten.gelu.out(x, out=y)
                yield MicroCase(category, "gelu", "GELU", size_label(n), n,
                                GELU_FLOP_PER_ELEMENT * n, 2 * n * size_of, gelu_setup,
                                flop_estimated=True,
                                note="GELU: 8 FLOP per element by convention (tanh form); "
                                "the exact erf GELU runs")
        elif category == "launch":
            def launch_setup() -> Callable[[], object]:
                x = torch.zeros(1, device=device, dtype=dtype)
                return lambda: x.add_(1)
            yield MicroCase(category, "launch", "Launch (add 1, sync)", "1", 1, 1, 2 * size_of,
                            launch_setup, sync_each=True,
                            note="tiny op + device synchronise per iteration (round trip)")
