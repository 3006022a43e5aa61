"""Where Core ML plans to run a model: typed records of an MLComputePlan (no torch, no coremltools).

`workloads.backends.coreml_backend` reads Apple's `MLComputePlan` (macOS 14.4+) into a
`ComputePlacement`: one `OpPlacement` per ML Program operation (its preferred device and
its share of the model's estimated cost), stored as JSON beside the compiled model. A
slice's `info` carries the `PlacementSummary` of each attention variant under
`compute_plan_variants` and the running model's device shares under `compute_plan`;
`ane_share(info)` and `variant_placements(info)` read them back for the report and the
metrics. This module imports neither torch nor coremltools, so the daemon may use it.

The numbers are Core ML's *estimates* before running (MLComputePlanCost.weight: an op's
share of the whole model's estimated work, 0-1), not measurements of where time went.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DEVICES: tuple[str, ...] = ("ane", "gpu", "cpu")
PLAN_SOURCE = ("MLComputePlan estimated cost per op, by preferred device "
               "(an estimate, not a measurement)")


@dataclass(frozen=True)
class OpPlacement:
    """One ML Program operation of a compute plan.

    `operator` is the MIL operator ("conv", "matmul", ...); `output` its first output's
    name in the program ("" when it has none); `preferred` the device Core ML prefers
    ("ane", "gpu", "cpu", "other"), None when Core ML gave no device usage (e.g. consts);
    `supported` the devices that could run it; `cost` Core ML's estimated share of the
    whole model's work (0-1), None when it gave no estimate.
    """

    operator: str
    output: str
    preferred: str | None
    supported: tuple[str, ...]
    cost: float | None


@dataclass(frozen=True)
class PlacementSummary:
    """Device shares of one converted model's estimated cost (each 0-1, summing to 1).

    `unattributed` is cost on ops with no device usage or an unrecognised device;
    `ops` counts operations by preferred device ("no_usage": no device given).
    """

    phase: str
    variant: str
    compute_units: str
    ane: float
    gpu: float
    cpu: float
    unattributed: float
    ops: dict[str, int]

    @property
    def shares(self) -> dict[str, float]:
        """The ane, gpu and cpu shares (0-1) by device name."""
        return {"ane": self.ane, "gpu": self.gpu, "cpu": self.cpu}

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlacementSummary:
        """The summary `to_dict` wrote; KeyError/TypeError/ValueError on anything else."""
        return cls(phase=str(data["phase"]), variant=str(data["variant"]),
                   compute_units=str(data["compute_units"]),
                   ane=float(data["ane"]), gpu=float(data["gpu"]), cpu=float(data["cpu"]),
                   unattributed=float(data["unattributed"]),
                   ops={str(k): int(v) for k, v in dict(data["ops"]).items()})


@dataclass(frozen=True)
class ComputePlacement:
    """A model's compute plan: every operation in program order (nested blocks depth-first)."""

    phase: str
    variant: str
    compute_units: str
    os_version: str
    ops: tuple[OpPlacement, ...]

    def summary(self) -> PlacementSummary:
        """Cost summed by preferred device over the total estimated cost.

        Raises ValueError when no operation has a cost (nothing to share out).
        """
        weights = dict.fromkeys((*DEVICES, "other"), 0.0)
        counts = dict.fromkeys((*DEVICES, "other", "no_usage"), 0)
        unplaced = 0.0
        for op in self.ops:
            cost = op.cost or 0.0
            if op.preferred is None:
                counts["no_usage"] += 1
                unplaced += cost
                continue
            kind = op.preferred if op.preferred in DEVICES else "other"
            counts[kind] += 1
            weights[kind] += cost
        total = sum(weights.values()) + unplaced
        if total <= 0:
            raise ValueError("the compute plan gives no operation a cost")
        return PlacementSummary(
            phase=self.phase, variant=self.variant, compute_units=self.compute_units,
            ane=weights["ane"] / total, gpu=weights["gpu"] / total, cpu=weights["cpu"] / total,
            unattributed=(unplaced + weights["other"]) / total, ops=counts,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, `ops` a list of dicts (`from_dict` reads it back)."""
        out = asdict(self)
        out["ops"] = [asdict(op) for op in self.ops]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ComputePlacement:
        """The placement `to_dict` wrote; KeyError/TypeError/ValueError on anything else."""
        ops = tuple(
            OpPlacement(operator=str(op["operator"]), output=str(op["output"]),
                        preferred=None if op["preferred"] is None else str(op["preferred"]),
                        supported=tuple(str(d) for d in op["supported"]),
                        cost=None if op["cost"] is None else float(op["cost"]))
            for op in data["ops"])
        return cls(phase=str(data["phase"]), variant=str(data["variant"]),
                   compute_units=str(data["compute_units"]),
                   os_version=str(data["os_version"]), ops=ops)


def ane_share(info: dict[str, Any]) -> float | None:
    """The Neural Engine's share (0-1) of the slice's model's estimated cost, from a slice's
    `info`; None where no compute plan was available (placement unknown)."""
    plan = info.get("compute_plan")
    if isinstance(plan, dict) and isinstance(plan.get("ane"), int | float):
        return float(plan["ane"])
    return None


def variant_placements(info: dict[str, Any]) -> dict[str, PlacementSummary]:
    """Each attention variant's placement summary recorded in a slice's `info` (both
    variants on a Mac with MLComputePlan, whichever ran; the running model's alone for the
    other phases); {} where none was recorded. Malformed entries are skipped."""
    out: dict[str, PlacementSummary] = {}
    recorded = info.get("compute_plan_variants")
    if not isinstance(recorded, dict):
        return out
    for variant, data in recorded.items():
        try:
            out[str(variant)] = PlacementSummary.from_dict(data)
        except (KeyError, TypeError, ValueError):
            continue
    return out
