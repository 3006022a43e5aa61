"""Start a real `soakd run` process on a free port with a temp state dir, for tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fixture_paths import POWERMETRICS

REPO = Path(__file__).resolve().parents[1]
REPLAY = POWERMETRICS / "M1_plist_pumas_1.plist"  # has energy and thermal pressure


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, extra: str = "", phase_seconds: float = 1.0, run_at_start: bool = True,
                 backends: str = "cpu", slice_seconds: float = 1.0) -> Path:
    """A fast ci-profile config; energy and thermal pressure come from a recorded capture."""
    text = f"""
[schedule]
profile = "ci"
run_at_start = {"true" if run_at_start else "false"}

[workload]
backends = "{backends}"

[workload.overrides]
phase_seconds = {phase_seconds}
slice_seconds = {slice_seconds}

[sources]
replay_file = "{REPLAY}"
{extra}
"""
    path.write_text(text, encoding="utf-8")
    return path


class Daemon:
    def __init__(self, state_dir: Path, config: Path, port: int | None = None,
                 env: dict[str, str] | None = None, log_dir: Path | None = None,
                 module: str = "daemon.cli") -> None:
        """`module` is run with `python -m` (tests/standin_daemon.py accepts stand-in backends)."""
        self.state_dir = state_dir
        self.config = config
        self.port = free_port() if port is None else port
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log = (log_dir or state_dir) / f"daemon-{time.monotonic_ns()}.log"
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        environment.pop("CI", None)
        self._log_handle = open(self.log, "w", encoding="utf-8")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "run", "--config", str(config), "--state-dir",
             str(state_dir), "--listen", f"127.0.0.1:{self.port}"],
            cwd=REPO, env=environment, stdout=self._log_handle, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self, timeout: float = 5.0) -> str:
        with urllib.request.urlopen(self.url, timeout=timeout) as response:
            return str(response.read().decode())

    def healthz(self, timeout: float = 5.0) -> dict[str, Any]:
        """GET /healthz as JSON, whatever its status code."""
        url = f"http://127.0.0.1:{self.port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:  # 503 still carries the document
            return dict(json.loads(error.read()))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /healthz says the daemon runs (every start-up step done, the schedule set)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited early:\n{self.output()}")
            try:
                if "daemon starting" not in self.healthz(timeout=1.0)["problems"]:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"daemon not ready:\n{self.output()}")

    def value(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include `labels` (0 when absent)."""
        return sample_value(self.scrape(), name, **labels)

    def wait_for(self, name: str, minimum: float, timeout: float = 120.0, **labels: str) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            value = self.value(name, **labels)
            if value >= minimum:
                return value
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise AssertionError(f"{name}{labels} stayed at {value} < {minimum}\n{self.output()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def assert_stops_cleanly(self, within: float = 10.0) -> None:
        """SIGTERM: the daemon exits 0 within `within` seconds (it is waited on for 15)."""
        sent = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.wait(15)
        elapsed = time.monotonic() - sent
        assert code == 0, self.output()
        assert elapsed < within, f"took {elapsed:.1f} s"

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log_handle.close()

    def output(self) -> str:
        if not self._log_handle.closed:
            self._log_handle.flush()
        return self.log.read_text(encoding="utf-8", errors="replace")[-6000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log_handle.close()


def sample_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        pairs = _labels(label_text.rstrip("}"))
        if all(pairs.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def _labels(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in text.split('",'):
        if "=" in part:
            key, _, value = part.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out
