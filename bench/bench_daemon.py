"""The daemon under load: /metrics latency at 100 requests/s during a rotation, and the daemon's
RSS growth over many `ci` rotations.

    python bench/bench_daemon.py --rotations 100 --rate 100 --latency-seconds 10

Starts a real `soakd run` (ci profile, CPU, a recorded powermetrics capture as the energy
source) on a free loopback port with a temp state dir, then:
1. while a rotation runs, sends GET /metrics at a fixed rate from one client thread per
   request slot and reports p50/p99/max latency (target: p99 < 20 ms);
2. triggers rotations one after another with SIGUSR1 and reads the daemon's RSS (psutil)
   after each; growth is reported from rotation 10 (after imports and caches settle) and
   from rotation 1 (target: < 5 MB).
Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from daemon_process import Daemon, write_config  # noqa: E402

from workloads.timing import percentile  # noqa: E402


def completed(daemon: Daemon) -> float:
    """How many rotations the daemon has completed (soakd_rotations_total{result="completed"})."""
    return daemon.value("soakd_rotations_total", result="completed")


def wait_rotation(daemon: Daemon, count: float, timeout: float) -> None:
    """Wait up to `timeout` seconds until `count` rotations have completed; raises
    AssertionError (with the daemon's output) when they have not or the daemon exited."""
    daemon.wait_for("soakd_rotations_total", count, timeout=timeout, result="completed")


def load_metrics(url: str, rate: float, seconds: float) -> list[float]:
    """GET `url` at `rate` requests/s for `seconds`; latencies in seconds (failures raise)."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def one() -> None:
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
        except BaseException as exc:  # recorded, then re-raised below
            errors.append(exc)
            return
        with lock:
            latencies.append(time.perf_counter() - started)

    threads = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=one, daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(10)
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]!r}")
    return latencies


def main() -> int:
    """Run the two measurements on a fresh daemon and print them; 0 when both ran (the targets
    are printed beside the numbers, not enforced)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotations", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # Phases long enough to hold the latency window inside the first rotation.
        config = write_config(root / "soakd.toml", phase_seconds=max(2.0, args.latency_seconds / 2))
        daemon = Daemon(root / "state", config)
        try:
            daemon.wait_ready()
            daemon.wait_for("soakd_steps_total", 1, timeout=120)  # a rotation is running
            latencies = sorted(load_metrics(daemon.url, args.rate, args.latency_seconds))
            during = daemon.value("soakd_rotation_active")
            wait_rotation(daemon, 1, 600)
            print(f"/metrics under load: {len(latencies)} requests at {args.rate:g}/s over "
                  f"{args.latency_seconds:g} s during a rotation (rotation active at the end: {during:g})")
            print(f"  latency p50 {percentile(latencies, 50) * 1e3:.2f} ms, p99 "
                  f"{percentile(latencies, 99) * 1e3:.2f} ms, max {latencies[-1] * 1e3:.2f} ms, "
                  f"mean {statistics.fmean(latencies) * 1e3:.2f} ms (target p99 < 20 ms)")
            # Short phases for the RSS run: each rotation is three worker spawns.
            config.write_text(config.read_text().replace(
                f"phase_seconds = {max(2.0, args.latency_seconds / 2)}", "phase_seconds = 0.3")
                .replace("slice_seconds = 1", "slice_seconds = 0.3"))
            os.kill(daemon.process.pid, signal.SIGHUP)
            process = psutil.Process(daemon.process.pid)
            rss: dict[int, int] = {1: process.memory_info().rss}
            started = time.monotonic()
            for n in range(2, args.rotations + 1):
                os.kill(daemon.process.pid, signal.SIGUSR1)
                wait_rotation(daemon, n, 300)
                rss[n] = process.memory_info().rss
                if n % 10 == 0:
                    print(f"  rotation {n}: rss {rss[n] / 2**20:.1f} MiB "
                          f"({time.monotonic() - started:.0f} s)", flush=True)
            last = args.rotations
            base = 10 if last >= 20 else 1
            print(f"daemon RSS over {last} ci rotations: rotation 1 {rss[1] / 2**20:.1f} MiB, "
                  f"rotation {base} {rss[base] / 2**20:.1f} MiB, rotation {last} {rss[last] / 2**20:.1f} MiB")
            print(f"  growth from rotation {base}: {(rss[last] - rss[base]) / 2**20:+.2f} MiB; "
                  f"from rotation 1: {(rss[last] - rss[1]) / 2**20:+.2f} MiB (target < 5 MB)")
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
