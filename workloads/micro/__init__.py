"""The micro-benchmark suite (seed 002): small torch ops timed one at a time per backend.

Categories and sizes follow the seed:

| category      | ops                  | sizes                          | headline unit |
|---------------|----------------------|--------------------------------|---------------|
| `matmul`      | MatMul (n x n @ n x n) | 64, 128, 256, 512, 1024      | GFLOPS (and GB/s) |
| `elementwise` | Add, Mul             | 1K, 10K, 100K, 1M elements     | GB/s          |
| `reduction`   | Sum                  | 1K, 10K, 100K, 1M elements     | GB/s          |
| `transfer`    | Host->Device, Device->Host | 1K, 10K, 100K, 1M elements | GB/s        |
| `activation`  | ReLU, GELU           | 1K, 10K, 100K, 1M elements     | GFLOPS        |
| `launch`      | add 1 to a 1-element tensor, synchronised | 1 element | median time |

1K means 1,000 elements (decimal, as the seed's 10K/100K/1M). Every op writes into a
preallocated output (`out=` or `copy_`), so the allocator is not what is timed.

FLOP and byte counts (s = bytes per element of the dtype, 4 for fp32):

- MatMul n: FLOP = 2·n³; bytes = 3·n²·s (read A and B, write C once: the minimum traffic,
  so its GB/s is a lower bound and is left out of the peak bandwidth).
- Add / Mul, n elements: FLOP = n; bytes = 3·n·s (read two, write one).
- Sum, n elements: FLOP = n − 1; bytes = (n + 1)·s (read n, write the scalar).
- Host->Device / Device->Host, n elements: FLOP = 0; bytes = n·s, the payload (not
  read + write). On CUDA the host side is pinned memory and the copy is non-blocking;
  on MPS it is ordinary host memory. On the CPU backend host and device are the same
  memory: both directions are a memcpy (`copy_` between two CPU tensors) and are
  labelled "(memcpy)".
- ReLU, n elements: FLOP = n (one max per element); bytes = 2·n·s. It runs as
  `clamp_min(x, 0, out=y)`, the kernel `torch.relu` itself uses.
- GELU, n elements: FLOP = 8·n, a convention, not a measurement: torch's default exact
  (erf) GELU is what runs, and 8 counts the operations of the tanh form
  0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) with tanh as one. Rows carry
  `flop_estimated: true`. Bytes = 2·n·s.
- Launch: one `add_(1)` on a 1-element tensor followed by a device synchronise, every
  iteration: the round trip of a tiny op (launch + execute + sync). GFLOPS and GB/s are
  left empty; its median time is the number.

On a CPU a 1M-element fp32 vector (4 MB) fits in the last-level cache of most server
chips, so the CPU's "bandwidth" figures at that size are cache bandwidth, not DRAM.

Timing follows DESIGN's measurement rules: the backend's own step clock (`SyncClock` that
synchronises at every boundary on CPU/MPS, `EventClock` with CUDA events on CUDA); once per
backend a device warm-up (matmuls for `device_warmup_s`, reported apart), then per op and
size a synchronised warm-up that is timed and reported apart, then `iterations` timed
runs; the median is the headline (GFLOPS and GB/s come from it), with avg/min/max beside
it.

Only the torch backends (cpu, cuda, mps) take part. Core ML backends run whole converted
models, not individual tensor ops, so they are reported as skipped, with that reason.

The daemon never runs device work in its own process: `run_micro_in_worker()` runs each
backend in a worker process, through the same worker loop as the workload slices
(`workloads.process`). Modules: `results` (records, profiles; torch-free), `cases` and
`measure` (torch, in the worker), `run` (`run_micro`, `run_micro_in_worker`: in this
process or in workers), `table`.
"""

from __future__ import annotations

from workloads.micro.results import (
    BANDWIDTH_CATEGORIES,
    CATEGORIES,
    CATEGORY_TITLES,
    COREML_SKIP_REASON,
    MICRO_PROFILES,
    MicroProfile,
    MicroResult,
    MicroRun,
    get_micro_profile,
    load_average,
    size_label,
)
from workloads.micro.table import TABLE_HEADER, render_table

__all__ = [
    "BANDWIDTH_CATEGORIES",
    "CATEGORIES",
    "CATEGORY_TITLES",
    "COREML_SKIP_REASON",
    "MICRO_PROFILES",
    "TABLE_HEADER",
    "MicroProfile",
    "MicroResult",
    "MicroRun",
    "get_micro_profile",
    "load_average",
    "render_table",
    "size_label",
]
