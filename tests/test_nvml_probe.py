"""bench/nvml_probe.py runs end to end against the NVML stand-in, so the one command the GPU
machine runs does not fail on a typo (the real readings are in bench/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from unittest import mock

from nvml_standin import fake_pynvml, gpu, pynvml

PROBE = Path(__file__).resolve().parents[1] / "bench" / "nvml_probe.py"


def test_probe_prints_every_reading_with_unsupported_ones_named(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("nvml_probe", PROBE)
    assert spec is not None and spec.loader is not None
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    module = fake_pynvml([gpu(energy_mj=[0, 500_000, 1_000_000], pcie_replay=[0], power_limit_mw=[700_000],
                              reasons=[0x4])])
    module.nvmlSystemGetDriverVersion = lambda: "550.54"
    module.nvmlSystemGetNVMLVersion = lambda: "12.550"
    module.nvmlDeviceGetName = lambda h: "Stand-in GPU"
    monkeypatch.setattr(probe.time, "sleep", lambda s: None)
    with mock.patch.dict(sys.modules, {"pynvml": module}):
        assert probe.main(["--no-load", "--reads", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    raw = result["raw"]["gpus"][0]
    assert raw["enforced_power_limit_mw"] == {"value": 700_000}
    assert raw["ecc_corrected_volatile"] == {"error": "NVMLError_NotSupported", "message": "Not Supported"}
    assert raw["nvmlDeviceGetCurrentClocksEventReasons"]["decoded"] == ["sw_power_cap"]
    reads = result["source"]
    assert reads[0] == {"available": True, "reason": "ok: 1 GPU(s)"}
    assert reads[1]["power_limit_watts"] == {"gpu0": 700.0}
    assert reads[1]["hardware_errors"] == {"gpu0/pcie_replay": 0}
    assert {i["reading"] for i in reads[1]["issues"]} >= {"ecc_corrected_volatile", "xid"}
    assert result["sampler"]["throttle_active"] == ["nvml/sw_power_cap"]
    assert pynvml.NVML_ERROR_NOT_SUPPORTED == 3
