"""Read every NVML reading soakd uses, for real, on an NVIDIA machine, and print it as JSON.

For the issue's closing note ("the NVML path with the error counters runs for real on the lent
GPU machine"; a virtual machine may not support ECC or XID: "unsupported, with the reason NVML
gave" is a real reading). Three parts:

1. `raw`: each NVML call soakd makes, called directly through pynvml on every GPU, with its
   value or the NVML error class and message (energy, instantaneous power, enforced power
   limit, temperature, SM clock, memory, clock-event and clock-throttle reasons, volatile ECC
   corrected/uncorrected, PCIe replay counter, remapped rows, supported event types / XID),
   plus the driver and NVML versions.
2. `source`: soakd's NvmlSource read `--reads` times 1 s apart while a torch matmul loop loads
   cuda:0 (skip the load with `--no-load`): energy deltas, devices, lasting and passing issues,
   hardware error counters and events, power limit, throttle state, and how long each read took
   (the first read includes the 10-s hardware counters).
3. `sampler`: a Sampler over a fresh NvmlSource for `--reads` ticks: power with its method,
   whole-system energy, energy_over() of the middle of the run, throttle state, device health.

Run from the repository root on an NVIDIA machine (torch with CUDA for the load):

    python bench/nvml_probe.py > nvml_probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.sampler import Sampler
from daemon.sources.nvml import CLOCK_EVENT_CALLS, NvmlSource, decode_clock_event_reasons


def _call(nvml: Any, name: str, *args: Any) -> dict[str, Any]:
    """{"value": ...} or {"error": class, "message": ...} for one NVML call."""
    function = getattr(nvml, name, None)
    if function is None:
        return {"error": "missing_in_binding", "message": f"pynvml has no {name}"}
    try:
        value = function(*args)
    except nvml.NVMLError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    if isinstance(value, bytes):
        value = value.decode()
    if hasattr(value, "_fields_"):
        value = {field[0]: getattr(value, field[0]) for field in value._fields_}
    return {"value": value}


def raw_readings(nvml: Any) -> dict[str, Any]:
    """Every NVML call soakd makes, on every GPU, straight through pynvml."""
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    try:
        out: dict[str, Any] = {"driver": _call(nvml, "nvmlSystemGetDriverVersion"),
                               "nvml": _call(nvml, "nvmlSystemGetNVMLVersion"), "gpus": []}
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu: dict[str, Any] = {"index": index, "name": _call(nvml, "nvmlDeviceGetName", handle)}
            gpu["energy_mj"] = _call(nvml, "nvmlDeviceGetTotalEnergyConsumption", handle)
            gpu["power_mw_instantaneous"] = _call(nvml, "nvmlDeviceGetPowerUsage", handle)
            gpu["enforced_power_limit_mw"] = _call(nvml, "nvmlDeviceGetEnforcedPowerLimit", handle)
            gpu["temperature_c"] = _call(nvml, "nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
            gpu["sm_clock_mhz"] = _call(nvml, "nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_SM)
            memory = _call(nvml, "nvmlDeviceGetMemoryInfo", handle)
            gpu["memory_used_bytes"] = {"value": memory["value"]["used"]} if "value" in memory else memory
            for name in CLOCK_EVENT_CALLS:
                result = _call(nvml, name, handle)
                if "value" in result:
                    result["decoded"] = decode_clock_event_reasons(int(result["value"]))
                gpu[name] = result
            gpu["ecc_mode"] = _call(nvml, "nvmlDeviceGetEccMode", handle)
            for label, error_type in (("ecc_corrected_volatile", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                                      ("ecc_uncorrected_volatile", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
                gpu[label] = _call(nvml, "nvmlDeviceGetTotalEccErrors", handle, error_type, nvml.NVML_VOLATILE_ECC)
            gpu["pcie_replay"] = _call(nvml, "nvmlDeviceGetPcieReplayCounter", handle)
            gpu["remapped_rows (corr, unc, pending, failure)"] = _call(nvml, "nvmlDeviceGetRemappedRows", handle)
            events = _call(nvml, "nvmlDeviceGetSupportedEventTypes", handle)
            if "value" in events:
                events["xid_supported"] = bool(int(events["value"]) & nvml.nvmlEventTypeXidCriticalError)
            gpu["supported_event_types"] = events
            out["gpus"].append(gpu)
        return out
    finally:
        nvml.nvmlShutdown()


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def load(stop: threading.Event) -> None:
    """A torch fp32 matmul loop on cuda:0 until `stop` is set."""
    import torch

    a = torch.randn(4096, 4096, device="cuda")
    b = torch.randn(4096, 4096, device="cuda")
    while not stop.is_set():
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()


def source_readings(reads: int) -> list[dict[str, Any]]:
    """soakd's NvmlSource, `reads` times 1 s apart."""
    source = NvmlSource()
    ok, reason = source.available()
    out: list[dict[str, Any]] = [{"available": ok, "reason": reason}]
    try:
        for _ in range(reads if ok else 0):
            started = time.perf_counter()
            reading = source.read()
            seconds = time.perf_counter() - started
            out.append({
                "read_seconds": round(seconds, 6),
                "energy_joules_delta": reading.energy_joules,
                "power_watts_instantaneous": reading.power_watts,
                "temperatures_celsius": reading.temperatures_celsius,
                "clock_hertz": reading.clock_hertz,
                "memory_bytes": reading.memory_bytes,
                "devices": {d: dataclasses.asdict(s) for d, s in reading.devices.items()},
                "issues": [dataclasses.asdict(i) for i in reading.issues],
                "hardware_errors": {f"{d}/{k}": v for (d, k), v in reading.hardware_errors.items()},
                "hardware_events": [dataclasses.asdict(e) for e in reading.hardware_events],
                "hardware_conditions": {f"{d}/{k}": v for (d, k), v in reading.hardware_conditions.items()},
                "power_limit_watts": reading.power_limit_watts,
                "throttle_active": sorted(reading.throttle_active) if reading.throttle_active is not None else None,
                "throttle_events": reading.throttle_events,
                "counter_resets": reading.counter_resets,
            })
            time.sleep(1.0)
    finally:
        source.close()
    return out


def sampler_view(reads: int) -> dict[str, Any]:
    """A Sampler over NVML: power with its method, whole-system energy, energy_over()."""
    sampler = Sampler([NvmlSource()], interval_s=1.0)
    try:
        first = sampler.sample_once()
        for _ in range(reads):
            time.sleep(1.0)
            snap = sampler.sample_once()
        quarter = (snap.monotonic - first.monotonic) / 4
        over = sampler.energy_over([(first.monotonic + quarter, snap.monotonic - quarter)])
    finally:
        sampler.stop()
    return {
        "power_watts": {f"{s}/{c} ({snap.power_method.get((s, c))})": w for (s, c), w in snap.power_watts.items()},
        "system_energy_joules": snap.system_energy_joules,
        "energy_breakdown": snap.energy_breakdown.describe() if snap.energy_breakdown else None,
        "energy_over_middle": {"seconds": over.seconds, "joules": over.components, "method": over.method,
                               "watts": {c: j / over.seconds for c, j in over.components.items()
                                         if over.seconds}},
        "throttle_known": snap.throttle_known,
        "throttle_active": sorted(f"{s}/{r}" for s, r in snap.throttle_active),
        "throttled_seconds_total": {f"{s}/{r}": v for (s, r), v in snap.throttled_seconds_total.items()},
        "devices": {f"{s}/{d}": dataclasses.asdict(v) for (s, d), v in snap.devices.items()},
        "reading_unavailable": {"/".join(k): v for k, v in snap.reading_unavailable.items()},
        "hardware_errors_total": {"/".join(k): v for k, v in snap.hardware_errors_total.items()},
        "power_limit_watts": {"/".join(k): v for k, v in snap.power_limit_watts.items()},
        "health": {n: dataclasses.asdict(h) for n, h in snap.health.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Print the JSON described in the module docstring; 1 when nvidia-ml-py is missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reads", type=int, default=4, help="source reads / sampler ticks, 1 s apart (default 4)")
    parser.add_argument("--no-load", action="store_true", help="do not run a torch matmul loop on cuda:0")
    args = parser.parse_args(argv)
    try:
        import pynvml
    except ImportError as exc:
        print(f"nvidia-ml-py is not installed: {exc}", file=sys.stderr)
        return 1
    result: dict[str, Any] = {"raw": raw_readings(pynvml)}
    stop = threading.Event()
    worker = None
    if not args.no_load and not _cuda():
        print("no CUDA device visible to torch: reading without load", file=sys.stderr)
        args.no_load = True
    if not args.no_load:
        worker = threading.Thread(target=load, args=(stop,), daemon=True)
        worker.start()
        time.sleep(3.0)  # let clocks and power ramp up
    try:
        result["source"] = source_readings(args.reads)
        result["sampler"] = sampler_view(args.reads)
    finally:
        stop.set()
        if worker is not None:
            worker.join(timeout=10)
    result["load"] = "none" if args.no_load else "torch fp32 4096x4096 matmul loop on cuda:0"
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
