"""MLComputePlan bookkeeping with a stand-in plan: per-op records, device shares, the stored
plan beside the compiled model, and what a slice's info gives the report and the metrics.

MLComputePlan itself needs macOS 14.4+; the stand-in has its API's shape
(standin_compute_plan.py), so everything around it runs here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from standin_compute_plan import DEVICES, Block, NamedValue, Op, StandInPlan

from workloads.backends import coreml_backend
from workloads.backends.coreml_backend import (
    compute_plan_placement,
    placement_label,
    plan_path,
    read_compute_plan,
    stored_placement,
)
from workloads.placement import (
    ComputePlacement,
    OpPlacement,
    PlacementSummary,
    ane_share,
    variant_placements,
)

pytest.importorskip("coremltools")

ANE, GPU, CPU = DEVICES["ane"], DEVICES["gpu"], DEVICES["cpu"]


def mixed_plan() -> StandInPlan:
    inner = Block([Op("mul", ANE, 0.1, [NamedValue("m")]), Op("add", CPU, 0.05, [NamedValue("a")])])
    return StandInPlan(Block([
        Op("const", None, None, [NamedValue("w")]),  # a const: no device usage, no cost
        Op("conv", ANE, 0.6, [NamedValue("c")], supported=[ANE, GPU, CPU]),
        Op("matmul", GPU, 0.1, [NamedValue("mm")]),
        Op("cond", CPU, 0.1, [NamedValue("k")], blocks=[inner]),
        Op("transpose", None, 0.05, [NamedValue("t")]),  # costed but unplaced
    ]))


def test_per_op_records_keep_order_device_and_cost() -> None:
    placement = read_compute_plan(mixed_plan(), "attention", "ane", "CPU_AND_NE", "14.4")
    assert [(op.operator, op.output, op.preferred, op.cost) for op in placement.ops] == [
        ("const", "w", None, None),
        ("conv", "c", "ane", 0.6),
        ("matmul", "mm", "gpu", 0.1),
        ("cond", "k", "cpu", 0.1),
        ("mul", "m", "ane", 0.1),  # nested blocks follow their op, depth-first
        ("add", "a", "cpu", 0.05),
        ("transpose", "t", None, 0.05),
    ]
    assert placement.ops[1].supported == ("ane", "gpu", "cpu")
    assert placement.ops[0].supported == ()
    assert (placement.phase, placement.variant, placement.compute_units, placement.os_version) == \
        ("attention", "ane", "CPU_AND_NE", "14.4")
    # JSON round trip: what is stored beside the compiled model reads back the same.
    assert ComputePlacement.from_dict(json.loads(json.dumps(placement.to_dict()))) == placement


def test_costs_are_summed_by_preferred_device() -> None:
    summary = read_compute_plan(mixed_plan(), "attention", "ane", "CPU_AND_NE", "14.4").summary()
    assert summary.shares == pytest.approx({"ane": 0.7, "gpu": 0.1, "cpu": 0.15})
    assert summary.ane == pytest.approx(0.7)
    assert summary.unattributed == pytest.approx(0.05)
    assert summary.ops == {"ane": 2, "gpu": 1, "cpu": 2, "other": 0, "no_usage": 2}
    assert PlacementSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary


def test_unknown_devices_count_as_unattributed() -> None:
    class MLFutureComputeDevice:
        pass

    plan = StandInPlan(Block([Op("conv", ANE, 0.5), Op("conv", MLFutureComputeDevice(), 0.5)]))
    summary = read_compute_plan(plan, "conv", "standard", "ALL", "15.0").summary()
    assert summary.ane == pytest.approx(0.5) and summary.unattributed == pytest.approx(0.5)
    assert summary.ops["other"] == 1


def test_plans_without_a_program_or_costs_are_refused() -> None:
    with pytest.raises(ValueError, match="no ML Program"):
        read_compute_plan(StandInPlan(Block([]), program=False), "conv", "standard", "ALL", "14.4")
    with pytest.raises(ValueError, match="no operation a cost"):
        read_compute_plan(StandInPlan(Block([Op("conv", ANE, None)])), "conv", "standard", "ALL", "14.4")


def test_the_plan_is_stored_once_per_compiled_model_units_and_macos(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    compiled = tmp_path / "entry" / "model.mlmodelc"
    compiled.mkdir(parents=True)
    monkeypatch.setattr(coreml_backend, "_host_macos", lambda: (14, 4, 1))
    calls: list[tuple[Path, str]] = []

    def loader(path: Path, units: str) -> StandInPlan:
        calls.append((path, units))
        return mixed_plan()

    first = stored_placement(compiled, "CPU_AND_NE", "attention", "ane", loader)
    stored = plan_path(compiled, "CPU_AND_NE")
    assert stored == tmp_path / "entry" / "plans" / "CPU_AND_NE-macos14.4.1.json"
    assert ComputePlacement.from_dict(json.loads(stored.read_text())) == first
    assert calls == [(compiled, "CPU_AND_NE")]

    assert stored_placement(compiled, "CPU_AND_NE", "attention", "ane", loader) == first
    assert len(calls) == 1  # read back, not loaded again

    stored_placement(compiled, "CPU_AND_GPU", "attention", "ane", loader)  # other units
    monkeypatch.setattr(coreml_backend, "_host_macos", lambda: (15, 0))  # an OS update
    stored_placement(compiled, "CPU_AND_NE", "attention", "ane", loader)
    assert len(calls) == 3

    stored.write_text('{"phase": "attention", "ops": [')  # damaged: read the plan again
    monkeypatch.setattr(coreml_backend, "_host_macos", lambda: (14, 4, 1))
    assert stored_placement(compiled, "CPU_AND_NE", "attention", "ane", loader) == first
    assert len(calls) == 4


def test_compute_plan_placement_where_it_exists(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    from coremltools.models.compute_plan import MLComputePlan

    compiled = tmp_path / "model.mlmodelc"
    compiled.mkdir()
    if sys.platform != "darwin":
        assert compute_plan_placement(compiled, "CPU_AND_NE")["compute_plan"] == "unknown"
    monkeypatch.setattr(coreml_backend, "_host_macos", lambda: (14, 2))
    old = compute_plan_placement(compiled, "CPU_AND_NE")
    assert old == {"compute_plan": "unknown",
                   "compute_plan_reason": "MLComputePlan needs macOS 14.4+ (this is macOS 14.2)"}
    assert ane_share(old) is None and variant_placements(old) == {}
    assert placement_label(old) == "placement unknown"

    monkeypatch.setattr(coreml_backend, "_host_macos", lambda: (14, 4))
    seen: list[tuple[str, Any]] = []

    def load(path: str, compute_units: Any) -> StandInPlan:
        seen.append((path, compute_units))
        return StandInPlan(Block([Op("conv", ANE, 0.75), Op("softmax", CPU, 0.25)]))

    monkeypatch.setattr(MLComputePlan, "load_from_path", staticmethod(load))
    placed = compute_plan_placement(compiled, "CPU_AND_NE", "attention", "ane")
    assert placed["compute_plan"] == pytest.approx({"ane": 0.75, "gpu": 0.0, "cpu": 0.25})
    assert "estimate" in placed["compute_plan_source"]
    assert seen[0][0] == str(compiled) and seen[0][1].name == "CPU_AND_NE"
    assert placed["compute_plan_file"] == str(tmp_path / "plans" / "CPU_AND_NE-macos14.4.json")
    ops = ComputePlacement.from_dict(json.loads(Path(placed["compute_plan_file"]).read_text())).ops
    assert ops == (OpPlacement("conv", "", "ane", ("ane",), 0.75),
                   OpPlacement("softmax", "", "cpu", ("cpu",), 0.25))
    # What the report and a metric read back from the slice's info (it went through JSON).
    info = json.loads(json.dumps(placed))
    assert ane_share(info) == pytest.approx(0.75)
    (summary,) = variant_placements(info).values()
    assert summary.variant == "ane" and summary.phase == "attention" and summary.ane == pytest.approx(0.75)
    assert placement_label(placed) == "planned placement ane 75%, gpu 0%, cpu 25% (MLComputePlan estimate)"

    def broken(path: str, compute_units: Any) -> Any:
        raise ValueError("MLComputePlan is not supported.")

    monkeypatch.setattr(MLComputePlan, "load_from_path", staticmethod(broken))
    failed = compute_plan_placement(tmp_path / "other.mlmodelc", "CPU_AND_NE")
    assert failed["compute_plan"] == "unknown"
    assert "not supported" in failed["compute_plan_reason"]


def test_variant_placements_skip_malformed_entries() -> None:
    good = PlacementSummary("attention", "ane", "CPU_AND_NE", 0.9, 0.0, 0.1, 0.0, {"ane": 3})
    info = {"compute_plan_variants": {"ane": good.to_dict(), "standard": {"phase": "attention"}}}
    assert variant_placements(info) == {"ane": good}
    assert variant_placements({"compute_plan_variants": "unknown"}) == {}

