"""`soakd once` end to end, as a user runs it: `python -m daemon.cli once ...` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PHASES = ["matmul", "conv", "attention"]


def soakd(*args: str, cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "SOAKD_CACHE_DIR": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "daemon.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"soakd did not finish in {timeout} s; stderr: {err[-2000:]}")
    return process.returncode, out, err


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("soakd-cache")


@pytest.fixture(scope="module")
def ci_run(cache: Path) -> tuple[float, int, str, str]:
    """The issue's command, run alone so its wall time means something."""
    started = time.monotonic()
    code, out, err = finish(soakd("once", "--profile", "ci", "--backends", "cpu", "--json",
                                  cache=cache))
    return time.monotonic() - started, code, out, err


@pytest.fixture(scope="module")
def side_runs(cache: Path, ci_run: Any) -> dict[str, tuple[int, str, str]]:
    """The shorter runs, started together after the timed one."""
    runs = {
        "cuda": soakd("once", "--profile", "ci", "--backends", "cuda", "--phases", "matmul",
                      "--steps", "3", "--json", cache=cache),
        "table": soakd("once", "--profile", "ci", "--backends", "cpu", "--phases",
                       "matmul,attention", "--steps", "3", cache=cache),
    }
    return {name: finish(process) for name, process in runs.items()}


def test_ci_rotation_on_cpu(ci_run: tuple[float, int, str, str]) -> None:
    elapsed, code, out, err = ci_run
    assert code == 0, err
    assert elapsed < 60
    document = json.loads(out)
    host = document["host"]
    assert isinstance(host, dict) and host["os"] and host["torch"] and host["chip"]
    results = document["results"]
    assert sorted({r["phase"] for r in results}) == sorted(PHASES)
    for row in results:
        assert row["backend"] == row["requested_backend"] == "cpu"
        assert row["precision"] == "fp32"
        assert row["steps"] > 0
        assert row["seconds"] > 0
        assert row["flop"] == row["steps"] * row["flop_per_step"] > 0
        assert row["flop_per_second"] == pytest.approx(row["flop"] / row["seconds"], rel=1e-6)
        latency = row["latency_seconds"]
        assert 0 < latency["p50"] <= latency["p99"]
        assert row["failures"] == {}
        assert row["mismatches"] == 0 and row["checks"] > 0
        assert row["fallback"] is None
        # the stability score over the phase's slices (2 s phases of 1 s slices: two loops)
        stability = row["stability"]
        assert len(stability["loops"]) >= 2 and stability["pass_mark"] == 0.97
        assert stability["score"] == pytest.approx(min(stability["loops"]) / max(stability["loops"]))
        assert stability["passed"] == (stability["score"] >= 0.97)


def test_cuda_falls_back_to_cpu_here(side_runs: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = side_runs["cuda"]
    assert code == 0, err
    (row,) = json.loads(out)["results"]
    assert (row["requested_backend"], row["backend"], row["steps"]) == ("cuda", "cpu", 3)
    assert row["fallback"]["from"] == "cuda" and row["fallback"]["to"] == "cpu"
    assert row["fallback"]["reason"] == "unavailable"
    assert "CUDA" in row["fallback"]["detail"] or "GPU" in row["fallback"]["detail"]
    assert row["mismatches"] == 0


def test_table_output(side_runs: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = side_runs["table"]
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["phase", "backend", "prec", "steps/s", "TFLOP/s", "p50", "ms",
                                "p99", "ms", "vs", "CPU", "success", "mism", "rss", "MiB", "dev", "MiB",
                                "stability"]
    assert set(lines[1]) == {"-"}
    rows = [line.split() for line in lines[2:] if line.strip()]
    assert [r[:3] for r in rows] == [["matmul", "cpu", "fp32"], ["attention", "cpu", "fp32"]]
    assert all(float(r[3]) > 0 and r[8] == "100%" and r[9] == "0" for r in rows)
    assert all(r[12] == "-" for r in rows)  # --steps 3: one slice, no stability score
    assert "Traceback" not in err


BAD_ARGUMENTS = {
    "unknown backend": (["--backends", "cpu,tpu"], "tpu"),
    "unknown phase": (["--phases", "matmul,fft"], "fft"),
    "bad precision": (["--precision", "fp8"], "fp8"),
    "negative duration": (["--duration", "-3"], "--duration"),
    "duration and steps": (["--duration", "1", "--steps", "2"], "--steps"),
    "pass mark above 1": (["--pass-mark", "1.5"], "--pass-mark"),
}


def test_bad_arguments_exit_2_with_one_line(cache: Path) -> None:
    processes = {name: soakd("once", "--profile", "ci", *args, cache=cache)
                 for name, (args, _) in BAD_ARGUMENTS.items()}
    for name, process in processes.items():
        code, out, err = finish(process, timeout=60)
        named = BAD_ARGUMENTS[name][1]
        assert code == 2, (name, err)
        assert out == "", name
        lines = err.splitlines()
        assert len(lines) == 1, (name, err)
        assert "Traceback" not in err
        assert lines[0].startswith("soakd once: error:"), (name, err)
        assert named in lines[0], (name, err)


def test_fractional_duration_is_accepted(cache: Path) -> None:
    """--duration 0.5 is a valid time budget (durations are floats, not whole seconds), and the
    phase runs for it, not for the profile's 1 s slice."""
    code, out, err = finish(soakd("once", "--profile", "ci", "--backends", "cpu", "--phases",
                                  "matmul", "--duration", "0.5", "--no-cpu-baseline", "--json",
                                  cache=cache))
    assert code == 0, err
    (row,) = json.loads(out)["results"]
    assert row["steps"] > 0
    assert 0.4 <= row["seconds"] < 0.75  # measured time within the 0.5 s phase (1.0 s before)
