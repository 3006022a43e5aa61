"""The daemon's HTTP server: /metrics under concurrent load, /healthz, idle and bounded
connections (issue 19 item 7, issue 10 item 5). Load figures are in bench/RESULTS.md."""

from __future__ import annotations

import gzip
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_process import Daemon, write_config
from fault_helpers import locked_journal
from prometheus_client import CollectorRegistry, Counter

from daemon.health import Liveness, health
from daemon.http_server import MetricsApp
from daemon.journal import JournalStats
from daemon.sampler import Sampler
from daemon.sources.memory import MemorySource


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.mark.slow
def test_healthz_and_metrics_answer_50_concurrent_clients_during_a_rotation(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "state", write_config(tmp_path / "soakd.toml", phase_seconds=20))
    base = f"http://127.0.0.1:{daemon.port}"
    try:
        daemon.wait_ready()
        daemon.wait_for("soakd_steps_total", 1, timeout=60)  # a rotation runs
        document = daemon.healthz()
        assert document["status"] == "ok" and document["problems"] == []
        assert document["scheduler"]["alive"] and document["executor"] == {"alive": True, "busy": "rotation"}
        assert document["rotation"] == {"active": True, "id": 1}
        assert document["sources"]["replay"]["up"] and not document["sources"]["nvml"]["up"]
        assert document["listen"] == f"127.0.0.1:{daemon.port}"
        urls = [f"{base}/healthz" if i % 10 == 0 else f"{base}/metrics" for i in range(400)]
        with ThreadPoolExecutor(50) as pool:
            answers = list(pool.map(_get, urls))
        assert [code for code, _ in answers] == [200] * len(urls)
        assert all(b"soakd_info{" in body for url, (_, body) in zip(urls, answers, strict=True)
                   if url.endswith("/metrics"))
        assert _get(f"{base}/nothing")[0] == 404
        with locked_journal(tmp_path / "state" / "journal.sqlite3"):  # health never waits on it
            for _ in range(5):
                sent = time.monotonic()
                assert _get(f"{base}/healthz")[0] == 200
                assert time.monotonic() - sent < 2
    finally:
        daemon.stop()


def _established(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


@pytest.mark.slow
def test_idle_connections_are_closed_and_their_number_is_bounded(tmp_path: Path) -> None:
    extra = "[daemon]\nidle_timeout_seconds = 2\nmax_connections = 8\n"
    daemon = Daemon(tmp_path / "state", write_config(tmp_path / "soakd.toml", extra=extra, run_at_start=False))
    try:
        daemon.wait_ready()
        clients = [socket.create_connection(("127.0.0.1", daemon.port), timeout=30) for _ in range(14)]
        peak = 0
        open_clients = list(clients)
        deadline = time.monotonic() + 40
        while open_clients and time.monotonic() < deadline:
            peak = max(peak, _established(daemon.process.pid, daemon.port))
            for client in list(open_clients):
                client.setblocking(False)
                try:
                    if client.recv(1) == b"":  # the server closed it
                        open_clients.remove(client)
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    open_clients.remove(client)
            time.sleep(0.1)
        assert not open_clients, f"{len(open_clients)} idle connections still open"
        assert 0 < peak <= 8
        assert "soakd_info{" in daemon.scrape()
        for client in clients:
            client.close()
    finally:
        daemon.stop()


# --- in process -----------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _app(clock: _Clock) -> tuple[MetricsApp, Any]:
    registry = CollectorRegistry()
    counter = Counter("soakd_demo", "A demo counter.", registry=registry)
    return MetricsApp(registry, lambda: (True, {"status": "ok"}), cache_seconds=0.5, clock=clock), counter


def test_metrics_are_rendered_at_most_once_per_cache_period_per_format() -> None:
    clock = _Clock()
    app, counter = _app(clock)
    first = app.render("", compress=False)
    counter.inc()
    assert app.render("", compress=False) is first  # shared within the period
    assert b"soakd_demo_total 0.0" in first.body
    zipped = app.render("", compress=True)  # a rendering of its own, so already 1
    assert b"soakd_demo_total 1.0" in gzip.decompress(zipped.body)
    assert ("Content-Encoding", "gzip") in zipped.headers
    openmetrics = app.render("application/openmetrics-text; version=1.0.0", compress=False)
    assert "openmetrics" in dict(openmetrics.headers)["Content-Type"] and openmetrics.body.endswith(b"# EOF\n")
    clock.now += 0.6
    assert b"soakd_demo_total 1.0" in app.render("", compress=False).body


def _snapshot() -> Any:
    sampler = Sampler([MemorySource()])
    return sampler.sample_once()


def _live(**changes: Any) -> Liveness:
    values: dict[str, Any] = dict(stage="running", uptime_seconds=5.0, listen="127.0.0.1:1", scheduler_running=True,
                                  heartbeat_age_seconds=0.5, executor_alive=True, busy=None, rotation_id=None,
                                  next_rotation=None)
    return Liveness(**{**values, **changes})


@pytest.mark.parametrize("changes, problem", [
    ({"heartbeat_age_seconds": 30.0}, "scheduler not running"),
    ({"scheduler_running": False}, "scheduler not running"),
    ({"executor_alive": False}, "executor thread ended"),
    ({"stage": "stopping"}, "daemon stopping"),
])
def test_health_fails_when_a_part_of_the_daemon_is_dead(changes: dict[str, Any], problem: str) -> None:
    snapshot = _snapshot()
    stats = JournalStats(0, 0, 0, False, None)
    ok, document = health(_live(), snapshot, stats, 1.0, snapshot.monotonic + 0.1)
    assert ok and document["status"] == "ok" and document["sources"]["memory"]["up"]
    ok, document = health(_live(**changes), snapshot, stats, 1.0, snapshot.monotonic + 0.1)
    assert not ok and document["status"] == "failing" and problem in document["problems"]
    ok, document = health(_live(), snapshot, stats, 1.0, snapshot.monotonic + 60)
    assert not ok and "sampler stalled" in document["problems"]


def test_waiting_journal_rows_make_health_degraded_not_failing() -> None:
    snapshot = _snapshot()
    ok, document = health(_live(), snapshot, JournalStats(3, 12, 0, True, "database is locked"), 1.0,
                          snapshot.monotonic)
    assert ok and document["status"] == "degraded"
    assert document["journal"] == {"ok": False, "pending_rows": 12, "errors_total": 3, "dropped_rows_total": 0,
                                   "last_error": "database is locked"}
