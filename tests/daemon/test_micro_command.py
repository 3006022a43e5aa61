"""`soakd micro`: the JSON document and the table, skipped backends, bad arguments."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import run_main

from workloads.micro import CATEGORIES, COREML_SKIP_REASON

REPO = Path(__file__).resolve().parents[2]
ROWS_PER_BACKEND = 34  # 5 matmul + 2x4 element-wise + 4 sum + 2x4 transfer + 2x4 activation + 1


def soakd_command() -> list[str]:
    script = Path(sys.executable).parent / "soakd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "daemon.cli"]




def cuda_usable() -> bool:
    return torch.version.cuda is not None and torch.cuda.is_available()


@pytest.mark.slow
def test_json_on_cpu_in_a_subprocess_under_a_minute() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [*soakd_command(), "micro", "--profile", "ci", "--backends", "cpu", "--json"],
        capture_output=True, text=True, timeout=120, cwd=REPO, check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert elapsed < 60, f"soakd micro --profile ci took {elapsed:.1f} s"
    document = json.loads(proc.stdout)
    assert {"host", "results", "summary"} <= set(document)
    assert document["profile"] == "ci"
    rows = document["results"]
    assert len(rows) == ROWS_PER_BACKEND
    assert {row["category"] for row in rows} == set(CATEGORIES)
    for row in rows:
        assert row["backend"] == "cpu"
        assert row["median_s"] > 0 and row["min_s"] <= row["median_s"] <= row["max_s"]
    summary = document["summary"]["cpu"]
    assert summary["peak_gflops"] > 0 and summary["peak_gb_per_s"] > 0
    assert summary["launch_overhead_s"] > 0
    assert document["skipped"] == {} and document["failures"] == {}


@pytest.mark.slow
def test_table_has_the_seeds_headers(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(["micro", "--profile", "ci", "--backends", "cpu",
                               "--iterations", "3"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    sections = [line for line in lines if line.startswith("=== ")]
    assert sections == [
        "=== Matrix Multiplication Benchmark ===",
        "=== Element-wise Operations Benchmark ===",
        "=== Reduction Operations Benchmark ===",
        "=== Memory Transfer Bandwidth Benchmark ===",
        "=== Activation Functions Benchmark ===",
        "=== Launch Overhead Benchmark ===",
        "=== Performance Summary ===",
    ]
    headers = [line for line in lines if line.startswith("Operation")]
    assert len(headers) == 6
    for name in ("Operation", "Size", "Avg (ms)", "Min (ms)", "Max (ms)", "GFLOPS", "GB/s"):
        assert name in headers[0]
    matmul = [line for line in lines if line.startswith("MatMul")]
    assert [line.split()[1] for line in matmul] == ["64x64", "128x128", "256x256", "512x512",
                                                     "1024x1024"]
    assert re.search(r"^Peak Compute Performance: \d+\.\d\d GFLOPS", out, re.M)
    assert re.search(r"^Peak Memory Bandwidth: +\d+\.\d\d GB/s", out, re.M)
    assert "memcpy" in out  # the CPU's "transfers" say what they are
    assert err == ""


@pytest.mark.slow
def test_unavailable_cuda_is_reported_and_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    if cuda_usable():
        pytest.skip("this host has a usable NVIDIA GPU")
    code, out, err = run_main(["micro", "--profile", "ci", "--backends", "cpu,cuda",
                               "--iterations", "2", "--json"], capsys)
    assert code == 0, err
    document = json.loads(out)
    assert set(document["skipped"]) == {"cuda"}
    assert {row["backend"] for row in document["results"]} == {"cpu"}
    assert err.count("\n") == 1 and err.startswith("soakd micro: skipped cuda: ")
    assert "Traceback" not in err


def test_only_unavailable_backends_exit_1_with_clear_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    if cuda_usable():
        pytest.skip("this host has a usable NVIDIA GPU")
    code, out, err = run_main(["micro", "--backends", "cuda,coreml-ane"], capsys)
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"soakd micro: skipped cuda: {err.splitlines()[0].split(': ', 2)[2]}",
        f"soakd micro: skipped coreml-ane: {COREML_SKIP_REASON}",
        "soakd micro: no backend could run the suite",
    ]


@pytest.mark.parametrize("argv", [
    ["micro", "--iterations", "0"],
    ["micro", "--iterations", "-3"],
    ["micro", "--iterations", "many"],
    ["micro", "--backends", "tpu"],
    ["micro", "--backends", ","],
    ["micro", "--profile", "turbo"],
    ["micro", "--frobnicate"],
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main(argv, capsys)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("soakd")
    assert "error" in err and "Traceback" not in err
