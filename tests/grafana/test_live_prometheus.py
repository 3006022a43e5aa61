"""A real Prometheus, with the repo's scrape config and rules, scraping a real `soakd run`:
every dashboard panel's query and every recording rule must return data."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_process import Daemon, free_port, write_config
from queries import panel_queries, recording_rules

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_YML = REPO / "grafana" / "prometheus" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus")
DEFAULT_TARGET = "127.0.0.1:10466"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PROMETHEUS is None, reason="the Debian package prometheus is not installed"),
]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _query(base: str, expr: str) -> dict[str, Any]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.loads(response.read()))


def _query_range(base: str, expr: str, seconds: float = 600.0) -> dict[str, Any]:
    """The expression over the last `seconds`, as a Grafana time-series panel asks for it: a
    series that existed while work ran has data there even after it went away."""
    end = time.time()
    params = {"query": expr, "start": f"{end - seconds:.3f}", "end": f"{end:.3f}", "step": "1"}
    url = f"{base}/api/v1/query_range?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return dict(json.loads(response.read()))


def _has_data(answer: dict[str, Any]) -> bool:
    data = answer.get("data", {})
    if data.get("resultType") in ("scalar", "string"):
        return True
    return bool(data.get("result"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("live")
    # This VM has no temperature sensor: a sysfs thermal zone in a temp dir stands in for one.
    zone = tmp / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("x86_pkg_temp\n")
    (zone / "temp").write_text("47000\n")
    # The rotation starts only once Prometheus scrapes the daemon (SIGUSR1 below), as on a host
    # where Prometheus is already running: a rotation over before the first scrape would leave
    # its counters with no increase to see.
    # Phases of 12 s: the gauges that exist only while a slice runs (throughput now, the
    # sustained ratio) live through at least two of the repo's 5 s scrapes.
    config = write_config(tmp / "soakd.toml", extra=f'thermal_root = "{tmp / "thermal"}"',
                          run_at_start=False, phase_seconds=12.0)
    # The repo's config as it is when the default port is free; otherwise only the target moves.
    prometheus_yml = PROMETHEUS_YML
    port = 10466
    if not _port_free(port):
        port = free_port()
        document = yaml.safe_load(PROMETHEUS_YML.read_text())
        document["scrape_configs"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
        document["rule_files"] = [str(PROMETHEUS_YML.parent / f) for f in document["rule_files"]]
        prometheus_yml = tmp / "prometheus.yml"
        prometheus_yml.write_text(yaml.safe_dump(document))
    else:
        targets = yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"][0]["static_configs"][0]
        assert targets["targets"] == [DEFAULT_TARGET]
    daemon = Daemon(tmp / "state", config, port=port)
    web = free_port()
    prometheus = subprocess.Popen(
        [str(PROMETHEUS), f"--config.file={prometheus_yml}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))  # noqa: SIM115
    try:
        daemon.wait_ready()
        base = f"http://127.0.0.1:{web}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if _has_data(_query(base, 'up{job="soakd"} == 1')):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("Prometheus never scraped the daemon")
        daemon.signal(signal.SIGUSR1)
        daemon.wait_for("soakd_rotations_total", 1, result="completed", timeout=180)
        yield f"http://127.0.0.1:{web}", daemon, tmp
    finally:
        prometheus.terminate()
        prometheus.wait(20)
        daemon.stop()


def _wait_for_data(base: str, queries: list[tuple[str, str]], timeout: float) -> list[str]:
    """Names of the queries still without data when the timeout ends."""
    pending = dict(queries)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name, expr in list(pending.items()):
            answer = _query_range(base, expr)
            assert answer["status"] == "success", (name, expr, answer)
            if _has_data(answer):
                del pending[name]
        if pending:
            time.sleep(3)
    return [f"{name}: {pending[name]}" for name in pending]


def test_every_recording_rule_and_panel_query_returns_data(stack: tuple[str, Daemon, Path]) -> None:
    base, _daemon, tmp = stack
    rules = [(f"rule {name}", expr) for name, expr in recording_rules()]
    recorded = [(f"recorded {name}", name) for name, _ in recording_rules()]
    panels = [(f"{board} / {title} / {i}", expr)
              for i, (board, title, expr) in enumerate(panel_queries())]
    assert len(panels) > 30
    missing = _wait_for_data(base, rules + recorded + panels, timeout=150)
    assert not missing, "no data for:\n" + "\n".join(missing) + \
        "\n" + (tmp / "prometheus.log").read_text()[-3000:]


def test_prometheus_scrapes_the_daemon_as_job_soakd(stack: tuple[str, Daemon, Path]) -> None:
    base, daemon, _ = stack
    answer = _query(base, 'up{job="soakd"}')
    assert answer["data"]["result"], answer
    assert answer["data"]["result"][0]["metric"]["instance"] == f"127.0.0.1:{daemon.port}"
    assert answer["data"]["result"][0]["value"][1] == "1"
