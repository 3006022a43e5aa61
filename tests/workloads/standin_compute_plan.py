"""A stand-in for coremltools' MLComputePlan (macOS 14.4+ only), with its API's shape.

Mirrors `coremltools.models.compute_plan` (coremltools 8.0+): `plan.model_structure.program`
(None for a neural network) with `functions["main"].block.operations`; each operation has
`operator_name`, `inputs`, `outputs` (named values with `.name`) and nested `blocks`;
`get_compute_device_usage_for_mlprogram_operation(op)` returns None or an object with
`preferred_compute_device` and `supported_compute_devices`, and
`get_estimated_cost_for_mlprogram_operation(op)` None or an object with `weight` (the op's
share of the model's estimated work, 0-1). Devices are told apart by class name, like
coremltools' MLNeuralEngineComputeDevice / MLGPUComputeDevice / MLCPUComputeDevice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workloads.coreml_convert import program_ops


class MLNeuralEngineComputeDevice:
    pass


class MLGPUComputeDevice:
    pass


class MLCPUComputeDevice:
    pass


DEVICES: dict[str, Any] = {"ane": MLNeuralEngineComputeDevice(), "gpu": MLGPUComputeDevice(),
                           "cpu": MLCPUComputeDevice()}


@dataclass
class NamedValue:
    name: str


@dataclass
class Op:
    """An operation; `device` (a device object) and `weight` are what the plan will say of it."""

    operator_name: str
    device: Any
    weight: float | None
    outputs: list[NamedValue] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    blocks: list[Block] = field(default_factory=list)
    supported: list[Any] | None = None


@dataclass
class Block:
    operations: list[Op]
    inputs: list[Any] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)


@dataclass
class Usage:
    preferred_compute_device: Any
    supported_compute_devices: list[Any]


@dataclass
class Cost:
    weight: float


class StandInPlan:
    """The shape of coremltools.models.compute_plan.MLComputePlan, with made-up placements."""

    def __init__(self, block: Block, program: bool = True) -> None:
        main = type("Function", (), {"block": block, "inputs": []})()
        program_obj = type("Program", (), {"functions": {"main": main}})() if program else None
        self.model_structure = type("Structure", (), {"program": program_obj,
                                                      "neuralnetwork": None, "pipeline": None})()

    def get_compute_device_usage_for_mlprogram_operation(self, op: Op) -> Usage | None:
        if op.device is None:
            return None
        return Usage(op.device, op.supported if op.supported is not None else [op.device])

    def get_estimated_cost_for_mlprogram_operation(self, op: Op) -> Cost | None:
        return None if op.weight is None else Cost(op.weight)


DeviceRule = Callable[[str], str]


def plan_of_package(package: Path, device_of: DeviceRule) -> StandInPlan:
    """A plan over the real operations of a saved ML Program: consts get no usage and no
    cost (as Core ML reports them), every other op the device `device_of(op type)` and an
    equal share of the cost."""
    ops = program_ops(package)
    work = [op for op in ops if op.type != "const"]
    weight = 1.0 / len(work)
    return StandInPlan(Block([
        Op(op.type, None, None, [NamedValue(name) for name in op.outputs]) if op.type == "const"
        else Op(op.type, DEVICES[device_of(op.type)], weight, [NamedValue(name) for name in op.outputs])
        for op in ops
    ]))
