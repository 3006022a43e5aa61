"""Dashboard panel queries evaluated by the real `promtool test rules` on constructed series.

For situations the live test (a real Prometheus scraping a real `soakd run` on this one-CPU VM)
cannot produce: several GPUs with a slow one, a throttling GPU, a host that cannot see
throttling, sub-millisecond CUDA steps whose latencies are sampled. Each case reads its query
from the committed dashboard JSON (tests/grafana/queries.py, variables substituted), so a case
checks the panel as shipped, not a copy of its query.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from queries import EMPTY_IN_CI, panel_queries, panel_targets

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")

GPU = 'job="soakd", instance="gpu-01", phase="matmul", backend="cuda", precision="bf16"'
GPU_OUT = {"instance": "gpu-01", "phase": "matmul", "backend": "cuda", "precision": "bf16"}


@dataclass
class Case:
    """One panel target, the series it reads, and what it must return at `at`."""

    board: str
    title: str
    target: int
    series: list[tuple[str, str]]  # (series, promtool values)
    expected: list[tuple[dict[str, str], float]]  # (labels, value); [] means no data
    at: str = "70m"
    extra: list[tuple[str, list[tuple[dict[str, str], float]]]] = field(default_factory=list)

    @property
    def expr(self) -> str:
        return panel_targets(self.board, self.title)[self.target]

    def test(self) -> dict[str, Any]:
        """The promtool test group for this case (expected samples at `at`, then at `extra`)."""
        checks = [(self.at, self.expected), *self.extra]
        return {
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in self.series],
            "promql_expr_test": [
                {"expr": self.expr, "eval_time": at,
                 "exp_samples": [{"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
                                  "value": value} for labels, value in expected]}
                for at, expected in checks],
        }


def device(number: str) -> dict[str, str]:
    return {**GPU_OUT, "device": number}


NVML = 'job="soakd", instance="gpu-01", source="nvml"'


def nvml(gpu: str, **labels: str) -> dict[str, str]:
    return {"instance": "gpu-01", "source": "nvml", "device": gpu, **labels}


CASES = {
    # The slow GPU is named with its ratio to the host's median device.
    "device outlier ratio, three GPUs": Case(
        "soakd-stability", "Device throughput vs the host's median device", 0,
        [(f'soakd_device_relative_throughput_ratio{{{GPU}, device="0"}}', "_x9 1x60"),
         (f'soakd_device_relative_throughput_ratio{{{GPU}, device="1"}}', "_x9 1.02x60"),
         (f'soakd_device_relative_throughput_ratio{{{GPU}, device="2"}}', "_x9 0.82x60")],
        [(device("0"), 1.0), (device("1"), 1.02), (device("2"), 0.82)]),
    "outlier count": Case(
        "soakd-stability", "Outlier devices now", 0,
        [(f'soakd_device_outlier{{{GPU}, device="0"}}', "0x70"),
         (f'soakd_device_outlier{{{GPU}, device="1"}}', "0x70"),
         (f'soakd_device_outlier{{{GPU}, device="2"}}', "0x30 1x40")],
        [({}, 1.0)], extra=[("20m", [({}, 0.0)])]),
    # An H200 at its power cap is throttled; a host that cannot see throttling is unknown.
    "throttling: throttled, not throttled, unknown": Case(
        "soakd-power-thermal", "Throttling", 0,
        [('soakd_throttle_active{job="soakd", instance="gpu-01", source="nvml", reason="sw_power_cap"}', "1x70"),
         ('soakd_throttle_observable{job="soakd", instance="gpu-01"}', "1x70"),
         ('soakd_throttle_observable{job="soakd", instance="mini-02"}', "1x70"),
         ('soakd_throttle_observable{job="soakd", instance="vm-03"}', "0x70")],
        [({"instance": "gpu-01", "source": "nvml", "reason": "sw_power_cap"}, 1.0),
         ({"instance": "mini-02", "reason": "none"}, 0.0),
         ({"instance": "vm-03", "reason": "none"}, -1.0)]),
    "time throttled": Case(
        "soakd-power-thermal", "Time throttled by reason", 0,
        [('soakd_throttled_seconds_total{job="soakd", instance="gpu-01", source="nvml", reason="sw_power_cap"}',
          "0+60x70")],
        [({"instance": "gpu-01", "source": "nvml", "reason": "sw_power_cap"}, 3600.0)]),
    "whole-system power": Case(
        "soakd-power-thermal", "Whole-system power", 0,
        [('soakd_system_energy_joules_total{job="soakd", instance="gpu-01"}', "0+42000x70")],
        [({"instance": "gpu-01"}, 700.0)]),
    "duty cycle": Case(
        "soakd-stability", "Duty cycle", 0,
        [(f'soakd_load_gap_seconds_total{{{GPU}, device="0"}}', "0+3x70"),
         (f'soakd_phase_seconds_total{{{GPU}, device="0"}}', "0+60x70")],
        [(device("0"), 0.95)]),
    # Sub-ms CUDA steps: the histogram holds a 1-in-16 sample of them, so its _sum is 1/16 of
    # the measured time; dividing by it read 16x the throughput.
    "mean throughput with sampled latencies": Case(
        "soakd-stability", "Mean throughput by phase and backend", 0,
        [(f'soakd_flop_total{{{GPU}, device="0"}}', "0+6e14x70"),
         (f'soakd_measured_seconds_total{{{GPU}, device="0"}}', "0+60x70"),
         (f'soakd_step_duration_seconds_sum{{{GPU}, device="0"}}', "0+3.75x70")],
        [(GPU_OUT, 1e13)]),
    "throughput while running, a gap while not": Case(
        "soakd-stability", "Throughput by backend — $phase", 0,
        [(f'soakd_throughput_flop_per_second{{{GPU}, device="0"}}', "1e13x4 stale _x9 1e13x4 stale")],
        [(device("0"), 1e13)], at="2m", extra=[("8m", []), ("16m", [(device("0"), 1e13)]), ("21m", [])]),
    # The lent H200 reported one uncorrectable remapped row from before soakd started; an XID
    # counted at 60m is a new error in its interval, an unchanged count is none.
    "hardware error counts": Case(
        "soakd-power-thermal", "Hardware error counts", 0,
        [(f'soakd_hardware_errors_total{{{NVML}, device="gpu0", kind="remapped_rows_uncorrectable"}}', "1x70"),
         (f'soakd_hardware_errors_total{{{NVML}, device="gpu1", kind="xid"}}', "0x60 1x10")],
        [(nvml("gpu0", kind="remapped_rows_uncorrectable"), 1.0), (nvml("gpu1", kind="xid"), 1.0)]),
    "new hardware errors": Case(
        "soakd-power-thermal", "New hardware errors", 0,
        [(f'soakd_hardware_errors_total{{{NVML}, device="gpu0", kind="remapped_rows_uncorrectable"}}', "1x70"),
         (f'soakd_hardware_errors_total{{{NVML}, device="gpu1", kind="xid"}}', "0x60 1x10")],
        [(nvml("gpu0", kind="remapped_rows_uncorrectable"), 0.0), (nvml("gpu1", kind="xid"), 0.0)],
        extra=[("61m", [(nvml("gpu0", kind="remapped_rows_uncorrectable"), 0.0),
                        (nvml("gpu1", kind="xid"), 1.0)])]),
    "row remapping": Case(
        "soakd-power-thermal", "Row remapping", 0,
        [(f'soakd_hardware_condition{{{NVML}, device="gpu0", condition="row_remap_pending"}}', "0x60 1x10"),
         (f'soakd_hardware_condition{{{NVML}, device="gpu0", condition="row_remap_failure"}}', "0x70")],
        [(nvml("gpu0", condition="row_remap_pending"), 1.0), (nvml("gpu0", condition="row_remap_failure"), 0.0)]),
    "run configuration": Case(
        "soakd-stability", "Run configuration", 0,
        [(f'soakd_run_info{{{GPU}, device="0", run_key="3f2a", shapes="4x2048x2048", technique="cuda_graph", '
          'memory_format="contiguous", variant="standard", tf32="false"}', "1x70")],
        [({**device("0"), "run_key": "3f2a", "shapes": "4x2048x2048", "technique": "cuda_graph",
           "memory_format": "contiguous", "variant": "standard", "tf32": "false"}, 1.0)]),
}


def run(cases: dict[str, Case], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "panels.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m",
                                    "tests": [case.test() for case in cases.values()]},
                                   allow_unicode=True, sort_keys=False), encoding="utf-8")
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, "test", "rules", path.name], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=False)


def test_panel_queries_on_constructed_series(tmp_path: Path) -> None:
    result = run(CASES, tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    case = CASES["device outlier ratio, three GPUs"]
    wrong = Case(case.board, case.title, case.target, case.series,
                 [(device("0"), 1.0), (device("1"), 1.02), (device("2"), 0.9)])
    result = run({"wrong": wrong}, tmp_path)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_every_panel_empty_in_ci_is_evaluated_here() -> None:
    titles = {(board, title) for board, title, _ in panel_queries()}
    assert set(EMPTY_IN_CI) <= titles
    covered = {(case.board, case.title) for case in CASES.values() if case.expected}
    assert set(EMPTY_IN_CI) <= covered
