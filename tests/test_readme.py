"""The README stays current: every exported metric is listed, CI runs its test command."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.metric_catalog import METRICS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _command_after(marker: str) -> str:
    block = README.split(f"<!-- {marker} -->", 1)[1]
    return re.search(r"```sh\n(.+?)\n```", block, re.S).group(1).strip()  # type: ignore[union-attr]


def test_every_metric_is_in_the_readme() -> None:
    missing = [m.name for m in METRICS if f"`{m.name}`" not in README]
    assert not missing


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "test-command" in ci and "eval" in ci
    command = _command_after("test-command")
    assert "pytest" in command and "torch==2.13.0" in command
    # the pinned CPU torch goes in before the package, so pip never pulls the CUDA build
    assert command.index("torch==2.13.0") < command.index("pip install -e")


def test_run_command_installs_pinned_torch_first_and_runs_the_daemon() -> None:
    command = _command_after("run-command")
    assert command.index("torch==2.13.0") < command.index("pip install -e .")
    assert command.endswith("soakd run")
