"""/metrics under concurrent load during a rotation (issue 19 item 7): latency and errors.

    python bench/bench_http.py --requests 2000 --concurrency 50

Starts a real `soakd run` (ci profile, CPU, a recorded powermetrics capture as the energy
source, phases long enough that one rotation outlasts the load) on a free loopback port with
a temp state dir, waits until the rotation's first steps, then sends `--requests` GET /metrics
from `--concurrency` client threads, each a new TCP connection (as a scraper without
keep-alive does; `--keep-alive` reuses one connection per thread), with a 10 s timeout, and
reports p50/p99/max latency (connect to last byte), errors, and whether the rotation was still
running at the end. Target: p99 < 100 ms and no error on a 2-core machine. `/healthz` is
measured the same way with `--path /healthz`. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from daemon_process import Daemon, write_config  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100) of `values`; IndexError when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def load(port: int, path: str, requests: int, concurrency: int, keep_alive: bool,
         timeout: float = 10.0) -> tuple[list[float], list[str]]:
    """Latencies (s) of the successful requests and the errors, `requests` in all."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [requests]

    def take() -> bool:
        with lock:
            if remaining[0] <= 0:
                return False
            remaining[0] -= 1
            return True

    def client() -> None:
        connection: http.client.HTTPConnection | None = None
        while take():
            started = time.perf_counter()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                connection.request("GET", path)
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or not body:
                    raise RuntimeError(f"HTTP {response.status}, {len(body)} bytes")
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
            except Exception as exc:  # counted, the run goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                if connection is not None:
                    connection.close()
                connection = None
                continue
            if not keep_alive:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * requests)
    return latencies, errors


def main() -> int:
    """Run the load and print the latencies; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--path", default="/metrics")
    parser.add_argument("--keep-alive", action="store_true", help="one connection per client thread")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the load this many times")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = write_config(root / "soakd.toml", phase_seconds=120)  # one rotation outlasts the load
        daemon = Daemon(root / "state", config)
        try:
            daemon.wait_ready()
            daemon.wait_for("soakd_steps_total", 1, timeout=120)  # the rotation runs
            size = len(daemon.scrape().encode())
            print(f"soakd at {daemon.url} (pid {daemon.process.pid}), a scrape is {size} bytes; "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
            for n in range(1, args.rounds + 1):
                started = time.perf_counter()
                latencies, errors = load(daemon.port, args.path, args.requests, args.concurrency, args.keep_alive)
                wall = time.perf_counter() - started
                active = daemon.value("soakd_rotation_active")
                print(f"round {n}: {args.requests} GET {args.path} at concurrency {args.concurrency} "
                      f"({'keep-alive' if args.keep_alive else 'a new connection each'}), {wall:.1f} s, "
                      f"{len(latencies) / wall:.0f} requests/s, rotation active at the end: {active:g}")
                if latencies:
                    print(f"  latency p50 {percentile(latencies, 50) * 1e3:.1f} ms, p99 "
                          f"{percentile(latencies, 99) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms, "
                          f"mean {statistics.fmean(latencies) * 1e3:.1f} ms; errors {len(errors)}"
                          + (f" (first: {errors[0]})" if errors else ""))
                else:
                    print(f"  every request failed; first: {errors[0] if errors else '?'}")
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
