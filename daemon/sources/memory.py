"""Memory: this process's RSS, system used/available, swap used (psutil), and torch allocators.

Kinds: `rss`, `system_used`, `system_available`, `swap_used`; when torch is already imported
in this process and a device was initialised, `cuda{i}_allocated` / `cuda{i}_reserved` /
`cuda{i}_peak` and `mps_allocated` / `mps_driver_allocated`. torch is never imported here
(it is heavy); workloads run in a child worker (DESIGN.md), so the daemon's own allocators
are normally empty and the worker reports its device memory itself.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from daemon.sources.base import Reading, Source, SourceError
from daemon.sources.registry import SourceSpec, register


def torch_memory() -> dict[str, int]:
    """Device allocator statistics of this process in bytes, by kind (`cuda0_allocated`, ...,
    `mps_allocated`), if torch is already imported and a device was initialised; else {}.
    torch is never imported here. Errors of the allocator calls propagate."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return {}
    out: dict[str, int] = {}
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():
        for i in range(cuda.device_count()):
            out[f"cuda{i}_allocated"] = int(cuda.memory_allocated(i))
            out[f"cuda{i}_reserved"] = int(cuda.memory_reserved(i))
            out[f"cuda{i}_peak"] = int(cuda.max_memory_allocated(i))
    mps = getattr(torch, "mps", None)
    backends = getattr(torch, "backends", None)
    if (mps is not None and backends is not None and backends.mps.is_available()
            and hasattr(mps, "current_allocated_memory")):
        out["mps_allocated"] = int(mps.current_allocated_memory())
        out["mps_driver_allocated"] = int(mps.driver_allocated_memory())
    return out


class MemorySource(Source):
    """psutil process and system memory, plus torch allocators when present.

    `pid` is the process whose resident set is read (None or 0: this process);
    `include_torch` adds this process's torch allocator figures (`torch_memory`).
    """

    name = "memory"

    def __init__(self, pid: int | None = None, include_torch: bool = True) -> None:
        self.pid = pid or os.getpid()
        self.include_torch = include_torch
        self._process: Any = None

    def available(self) -> tuple[bool, str]:
        """(True, "ok"), or (False, why) when psutil is missing or the process cannot be seen."""
        try:
            import psutil

            self._process = psutil.Process(self.pid)
        except Exception as exc:  # ImportError, NoSuchProcess, AccessDenied
            return False, f"unavailable: {exc}"
        return True, "ok"

    def read(self) -> Reading:
        """`memory_bytes`: `rss`, `system_used`, `system_available`, `swap_used` and the torch
        kinds, in bytes. Raises SourceError when psutil cannot read them (psutil.Error from
        opening the process propagates when `available()` was not called first); a failing
        torch allocator only leaves its kinds out."""
        import psutil

        if self._process is None:
            self._process = psutil.Process(self.pid)
        try:
            rss = self._process.memory_info().rss
            system = psutil.virtual_memory()
            swap = psutil.swap_memory()
        except psutil.Error as exc:
            raise SourceError(f"psutil: {exc}") from None
        memory = {
            "rss": int(rss),
            "system_used": int(system.used),
            "system_available": int(system.available),
            "swap_used": int(swap.used),
        }
        if self.include_torch:
            # A broken device must not hide the psutil numbers: its kinds are just left out.
            with contextlib.suppress(Exception):
                memory.update(torch_memory())
        return Reading(memory_bytes=memory)


register(SourceSpec(name="memory", description="daemon RSS, system and swap memory (psutil), torch allocators",
                    build=lambda _options: MemorySource(), order=90))
