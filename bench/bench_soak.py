"""Does a soak soak? The real daemon on a GPU host, its load gaps, and the GPU's power at 10 Hz.

Runs a real `soakd run` (heavy shapes, CUDA, one rotation) with the given phase and slice
lengths while, beside it:
- a thread reads each GPU's NVML energy counter every 0.1 s (power = dE/dt, the counter's own
  method; not the daemon's sampler), with the SM clock;
- a client GETs /metrics at --rate requests/s and times each answer.
When the rotation has completed it stops the daemon (SIGTERM) and reports, from the journal,
the daemon's JSON log and the 10 Hz trace:
- per phase: wall time, load gap from soakd's own figures (sum of slice gaps; the largest
  slice boundary = tail of one slice + lead of the next), throughput per device;
- from the trace: steady power per phase (median after the phase's first 5 s) against the
  enforced power limit, and the lowest 0.5 s mean power around every slice boundary;
- the rotation's wall time against the sum of its configured phase times (and with the
  preparation before the first phase left out);
- /metrics latency p50/p99/max.
Files (journal, log, trace as CSV, JSON summary) go to --out. Run on the GPU host from the
repository root, e.g.

    python bench/bench_soak.py --phase-seconds 120 --slice-seconds 30 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Trace:
    """10 Hz NVML samples: (unix time, {gpu: cumulative mJ}, {gpu: SM clock MHz})."""

    samples: list[tuple[float, dict[int, int], dict[int, int]]] = field(default_factory=list)
    limits_w: dict[int, float] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)

    def power(self, gpu: int) -> list[tuple[float, float]]:
        """(mid-time, W) between consecutive samples."""
        out = []
        for (t0, e0, _), (t1, e1, _) in zip(self.samples, self.samples[1:], strict=False):
            if t1 > t0 and gpu in e0 and gpu in e1:
                out.append(((t0 + t1) / 2, (e1[gpu] - e0[gpu]) / 1000.0 / (t1 - t0)))
        return out


def trace_nvml(stop: threading.Event, trace: Trace, interval: float = 0.1) -> None:
    """Append every GPU's energy counter (mJ) and SM clock (MHz) to `trace` every `interval`
    seconds until `stop` is set; also records each GPU's name and enforced power limit (W).
    Returns at once without NVML (no driver); an NVML error mid-trace propagates."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:  # no NVIDIA driver here (a CPU dry run of this script)
        return
    handles = {i: pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())}
    for i, handle in handles.items():
        trace.limits_w[i] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
        name = pynvml.nvmlDeviceGetName(handle)
        trace.names[i] = name.decode() if isinstance(name, bytes) else str(name)
    next_at = time.monotonic()
    while not stop.is_set():
        energy = {i: int(pynvml.nvmlDeviceGetTotalEnergyConsumption(h)) for i, h in handles.items()}
        clocks = {i: int(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)) for i, h in handles.items()}
        trace.samples.append((time.time(), energy, clocks))
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    pynvml.nvmlShutdown()


def load_metrics(url: str, rate: float, stop: threading.Event, latencies: list[float],
                 errors: list[str]) -> None:
    """GET `url` at `rate` requests/s until `stop` is set, one at a time; each answer's
    latency (seconds) goes to `latencies`, each failure's repr to `errors`."""
    next_at = time.monotonic()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
            latencies.append(time.perf_counter() - started)
        except Exception as exc:
            errors.append(repr(exc))
        next_at += 1.0 / rate
        stop.wait(max(0.0, next_at - time.monotonic()))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` (a line prefix) that carry `labels`, scraped from
    `url`; 0.0 when the scrape fails."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except Exception:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of `values`; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def run_daemon(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Run `soakd run` with a config written under `out` until one rotation has completed or
    failed, with the NVML trace and the /metrics load beside it, then stop it (SIGTERM, kill
    after 30 s). The last /metrics scrape is written to `out`/metrics.txt. Returns the trace,
    the latencies and errors, the state dir, the start time (unix s), the log path, the exit
    code, the daemon's RSS (bytes) when the rotation ended and that last scrape. Raises
    RuntimeError when the daemon exits early or no rotation ends within `args.timeout`
    seconds."""
    state = out / "state"
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    devices = "all" if args.devices == "all" else [int(d) for d in args.devices.split(",")]
    config = out / "soakd.toml"
    config.write_text(f"""
[daemon]
listen = "127.0.0.1:{port}"
log_format = "json"
[schedule]
profile = "{args.profile}"
run_at_start = true
[workload]
backends = "{args.backend}"
precisions = ["{args.precision}"]
cpu_baseline = "off"
devices = {json.dumps(devices)}
[workload.overrides]
phase_seconds = {args.phase_seconds}
slice_seconds = {args.slice_seconds}
[sources]
nvml = true
""", encoding="utf-8")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SOAKD_HEAVY_BENCHMARK": "1",
           "SOAKD_CACHE_DIR": str(out / "cache")}
    url = f"http://127.0.0.1:{port}/metrics"
    trace, stop = Trace(), threading.Event()
    latencies: list[float] = []
    errors: list[str] = []
    tracer = threading.Thread(target=trace_nvml, args=(stop, trace), daemon=True)
    tracer.start()
    log = open(out / "daemon.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    started = time.time()
    process = subprocess.Popen([sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
                                "--state-dir", str(state)], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    loader = None
    rss, final_scrape = 0, ""
    try:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and metric(url, "soakd_rotation_active") < 1:
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode}; see {out / 'daemon.log'}")
            time.sleep(0.5)
        loader = threading.Thread(target=load_metrics, args=(url, args.rate, stop, latencies, errors),
                                  daemon=True)
        loader.start()
        while time.monotonic() < deadline:
            done = metric(url, "soakd_rotations_total", result="completed") + \
                metric(url, "soakd_rotations_total", result="failed")
            if done >= 1:
                rss = psutil.Process(process.pid).memory_info().rss
                with urllib.request.urlopen(url, timeout=5) as response:
                    final_scrape = response.read().decode()
                break
            if process.poll() is not None:
                raise RuntimeError(f"daemon exited with {process.returncode}; see {out / 'daemon.log'}")
            time.sleep(1.0)
        else:
            raise RuntimeError(f"no rotation finished within {args.timeout} s")
    finally:
        stop.set()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        tracer.join(5)
        if loader is not None:
            loader.join(5)
    (out / "metrics.txt").write_text(final_scrape, encoding="utf-8")
    return {"trace": trace, "latencies": latencies, "errors": errors, "state": state,
            "started": started, "log": out / "daemon.log", "exit": process.returncode,
            "daemon_rss": rss, "scrape": final_scrape}


def analyse(run: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The summary of a `run_daemon` run, from its journal, JSON log and trace: per phase wall
    and load-gap seconds, the largest slice boundary, TFLOP/s by device, steady and lowest
    boundary power (W); the rotation's wall time against the planned phase time; /metrics
    latency p50/p99/max in ms; the daemon's RSS (MiB), the journal's device-outlier events and
    the scrape's relative-throughput lines."""
    db = sqlite3.connect(run["state"] / "journal.sqlite3")
    db.row_factory = sqlite3.Row
    rotation = dict(db.execute("SELECT * FROM rotations ORDER BY id LIMIT 1").fetchone())
    slices = [dict(r) for r in db.execute("SELECT * FROM slices ORDER BY id")]
    events = [json.loads(line) for line in run["log"].read_text().splitlines() if line.startswith("{")]
    phase_ends = [e for e in events if e.get("event") == "phase_end"]
    phase_starts = [e for e in events if e.get("event") == "phase_start"]
    trace: Trace = run["trace"]
    phases: list[dict[str, Any]] = []
    for end in phase_ends:
        name = end["phase"]
        rows = [s for s in slices if s["phase"] == name and not s["baseline"]]
        start_wall = min(s["started_at"] for s in rows)
        end_wall = max(s["ended_at"] for s in rows)
        per_device: dict[str, float] = {}
        for device in sorted({s["device"] for s in rows}):
            mine = [s for s in rows if s["device"] == device]
            seconds = sum(s["seconds"] for s in mine)
            per_device[device] = sum(s["flop"] for s in mine) / seconds / 1e12 if seconds else 0.0
        by_device: dict[str, list[dict[str, Any]]] = {}
        for s in rows:
            by_device.setdefault(s["device"], []).append(s)
        boundaries = [a["tail_gap_seconds"] + b["lead_gap_seconds"]
                      for lane in by_device.values() for a, b in itertools.pairwise(lane)]
        power: dict[int, float] = {}
        dips: dict[int, list[float]] = {}
        phase_end_dips: dict[int, list[float]] = {}
        # slice ends inside the phase (each device's slices but its last), and the phase's end
        # (the hand-over to the next phase's warm-up, or the rotation's end), apart
        inner = [s["ended_at"] for lane in by_device.values() for s in lane[:-1]]
        last = [lane[-1]["ended_at"] for lane in by_device.values()]
        for gpu in trace.limits_w:
            series = trace.power(gpu)
            steady = [w for t, w in series if start_wall + 5 <= t <= end_wall]
            power[gpu] = statistics.median(steady) if steady else float("nan")
            dips[gpu] = _lowest_around(series, inner)
            phase_end_dips[gpu] = _lowest_around(series, last)
        phases.append({
            "phase": name, "wall_seconds": end["wall_seconds"], "load_gap_seconds": end["load_gap_seconds"],
            "gap_share": end["load_gap_seconds"] / end["wall_seconds"] if end["wall_seconds"] else None,
            "largest_boundary_seconds": max(boundaries) if boundaries else 0.0,
            "first_slice_lead_seconds": rows[0]["lead_gap_seconds"],
            "tflops_per_device": per_device, "steady_power_w": power,
            "lowest_boundary_power_w": {g: min(v) if v else None for g, v in dips.items()},
            "lowest_phase_end_power_w": {g: min(v) if v else None for g, v in phase_end_dips.items()},
            "technique": json.loads(rows[0]["run"] or "{}").get("technique"),
            "memory_format": json.loads(rows[0]["run"] or "{}").get("memory_format"),
            "mismatches": sum(s["mismatches"] for s in rows),
            "failures": [s["failure_reason"] for s in rows if s["failure_reason"]],
        })
    planned = args.phase_seconds * len(phase_ends)
    rotation_wall = (rotation["ended_at"] or 0) - rotation["started_at"]
    first_phase = min((s["started_at"] for s in slices), default=rotation["started_at"])
    latencies = sorted(run["latencies"])
    return {
        "gpus": {str(g): trace.names.get(g) for g in trace.limits_w},
        "power_limit_w": {str(g): w for g, w in trace.limits_w.items()},
        "phases": phases, "phase_starts": len(phase_starts),
        "rotation": {"result": rotation["result"], "wall_seconds": rotation_wall,
                     "wall_from_first_phase_seconds": (rotation["ended_at"] or 0) - first_phase,
                     "planned_seconds": planned, "ratio": rotation_wall / planned if planned else None,
                     "ratio_from_first_phase": ((rotation["ended_at"] or 0) - first_phase) / planned
                     if planned else None},
        "metrics": {"requests": len(latencies), "errors": len(run["errors"]),
                    "p50_ms": percentile(latencies, 50) * 1e3, "p99_ms": percentile(latencies, 99) * 1e3,
                    "max_ms": (latencies[-1] * 1e3) if latencies else None},
        "daemon_exit": run["exit"],
        "daemon_rss_mib": run["daemon_rss"] / 2**20,
        "device_outliers": [json.loads(r[0]) for r in db.execute(
            "SELECT detail FROM events WHERE kind = 'device_outlier'")],
        "relative_throughput": [line for line in run["scrape"].splitlines()
                                if line.startswith("soakd_device_relative_throughput_ratio{")],
    }


def _lowest_around(series: list[tuple[float, float]], edges: list[float]) -> list[float]:
    """Per edge (unix time), the lowest 0.5 s mean power (5 samples at 10 Hz) within 1 s of it."""
    lows = []
    for edge in edges:
        window = [w for t, w in series if edge - 1.0 <= t <= edge + 1.0]
        if len(window) >= 5:
            lows.append(min(statistics.fmean(window[i:i + 5]) for i in range(len(window) - 4)))
    return lows


def render(summary: dict[str, Any], args: argparse.Namespace) -> str:
    """The summary as a Markdown table and two lines, for bench/RESULTS.md."""
    lines = [f"GPUs: {summary['gpus']}; enforced power limit {summary['power_limit_w']} W",
             f"phase_seconds {args.phase_seconds}, slice_seconds {args.slice_seconds}, {args.precision}",
             "| phase | technique | wall s | load gap s (share) | largest boundary s | TFLOP/s by device "
             "| steady W by GPU | lowest W at a slice boundary | lowest W at the phase's end | mismatches "
             "| failures |",
             "|---|---|---:|---:|---:|---|---|---|---|---:|---|"]
    for p in summary["phases"]:
        tflops = ", ".join(f"{d}: {v:.1f}" for d, v in p["tflops_per_device"].items())
        power = ", ".join(f"{g}: {w:.0f}" for g, w in p["steady_power_w"].items())
        low, end = (", ".join(f"{g}: {w:.0f}" if w is not None else f"{g}: -" for g, w in p[key].items())
                    for key in ("lowest_boundary_power_w", "lowest_phase_end_power_w"))
        lines.append(f"| {p['phase']} | {p['technique']}/{p['memory_format']} | {p['wall_seconds']:.1f} | "
                     f"{p['load_gap_seconds']:.3f} ({p['gap_share']:.2%}) | {p['largest_boundary_seconds']:.3f} "
                     f"| {tflops} | {power} | {low} | {end} | {p['mismatches']} | {p['failures'] or '-'} |")
    r, m = summary["rotation"], summary["metrics"]
    lines.append(f"rotation {r['result']}: wall {r['wall_seconds']:.1f} s = {r['ratio']:.3f} x planned "
                 f"{r['planned_seconds']:.0f} s; from the first phase's start "
                 f"{r['wall_from_first_phase_seconds']:.1f} s = {r['ratio_from_first_phase']:.3f} x")
    lines.append(f"daemon RSS after the rotation: {summary['daemon_rss_mib']:.1f} MiB; device outliers: "
                 f"{summary['device_outliers'] or 'none'}")
    lines += summary["relative_throughput"]
    lines.append(f"/metrics at {args.rate:g}/s during the rotation: {m['requests']} requests, {m['errors']} errors, "
                 f"p50 {m['p50_ms']:.2f} ms, p99 {m['p99_ms']:.2f} ms, max {m['max_ms']:.2f} ms")
    return "\n".join(lines)


def main() -> int:
    """Run, analyse, write trace.csv and summary.json under --out, print the table; 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=120.0)
    parser.add_argument("--slice-seconds", type=float, default=30.0)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--profile", default="heavy")
    parser.add_argument("--backend", default="cuda", help="cuda (cpu for a dry run of this script)")
    parser.add_argument("--devices", default="all", help="all, or device indices like 0,1")
    parser.add_argument("--rate", type=float, default=10.0, help="/metrics requests per second")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", type=Path, default=Path("out/soak"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run = run_daemon(args, args.out)
    summary = analyse(run, args)
    trace: Trace = run["trace"]
    with open(args.out / "trace.csv", "w", encoding="utf-8") as handle:
        gpus = sorted(trace.limits_w)
        handle.write("time," + ",".join(f"gpu{g}_mj,gpu{g}_sm_mhz" for g in gpus) + "\n")
        for t, energy, clocks in trace.samples:
            handle.write(f"{t:.3f}," + ",".join(f"{energy.get(g, '')},{clocks.get(g, '')}" for g in gpus) + "\n")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    print(render(summary, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
