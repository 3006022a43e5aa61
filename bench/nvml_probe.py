"""Read the NVML source for real: 3 readings 1 s apart while a torch matmul loop runs on cuda.

For the issue's closing note ("NVML reader run for real on the GPU machine once"). Prints
each raw reading of the source (energy deltas in J, instantaneous power in W, temperature,
SM clock, memory used, throttle events) and then the sampler's view of the same source
(power as ΔE/Δt). Run from the repository root on an NVIDIA machine:

    python bench/nvml_probe.py
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from daemon.sampler import Sampler
from daemon.sources.nvml import NvmlSource


def load(stop: threading.Event) -> None:
    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")
    while not stop.is_set():
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
        return 1
    source = NvmlSource()
    ok, reason = source.available()
    print(f"available: {ok} ({reason})")
    if not ok:
        return 1
    stop = threading.Event()
    worker = threading.Thread(target=load, args=(stop,), daemon=True)
    worker.start()
    try:
        time.sleep(2.0)  # let clocks and power ramp up
        for i in range(3):
            start = time.monotonic()
            reading = source.read()
            print(f"reading {i} ({time.monotonic() - start:.4f} s):")
            print(json.dumps({
                "energy_joules_delta": reading.energy_joules,
                "power_watts_instantaneous": reading.power_watts,
                "temperatures_celsius": reading.temperatures_celsius,
                "clock_hertz": reading.clock_hertz,
                "memory_bytes": reading.memory_bytes,
                "throttle_events": reading.throttle_events,
                "active_clock_event_reasons": source.active_reasons(),
            }, indent=2))
            time.sleep(1.0)
        sampler = Sampler([NvmlSource()], interval_s=1.0)
        first = sampler.sample_once()
        time.sleep(1.0)
        second = sampler.sample_once()
        print("sampler view after 1 s:")
        print(json.dumps({
            "power_watts_from_energy": {f"{s}/{c}": w for (s, c), w in second.power_watts.items()},
            "energy_between_j": Sampler.energy_between(first, second),
            "health": {n: dataclasses.asdict(h) for n, h in second.health.items()},
        }, indent=2))
        sampler.stop()
    finally:
        stop.set()
        worker.join(timeout=10)
        source.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
