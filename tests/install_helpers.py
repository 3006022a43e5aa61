"""Shared by the service-install tests: a recording Runner and the plan helpers."""

from __future__ import annotations

import plistlib
import sys
from collections.abc import Sequence
from typing import Any

from daemon.install import manager, render
from daemon.install import spec as install_spec

PYTHON = sys.executable
DAEMON_STOP_BUDGET_S = 10  # `soakd run` exits within 10 s of SIGTERM (DESIGN.md)


class Recorder:
    """A Runner that records each command and answers from a table (default: success)."""

    def __init__(self, answers: dict[tuple[str, ...], list[int]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: Sequence[str]) -> manager.CommandResult:
        self.calls.append(list(argv))
        for prefix, codes in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix and codes:
                code = codes.pop(0) if len(codes) > 1 else codes[0]
                return manager.CommandResult(code, "", f"exit {code}" if code else "")
        return manager.CommandResult(0, "", "")


def agent_plan() -> render.Plan:
    return render.make_plan(install_spec.resolve_spec("launchd", system=False, for_this_host=False))


def load_plist(plan: render.Plan) -> dict[str, Any]:
    document = plistlib.loads(plan.service_file.content.encode("utf-8"))
    assert isinstance(document, dict)
    return document


def split_supervisor(arguments: list[str]) -> tuple[list[str], list[str]]:
    separator = arguments.index("--")
    return arguments[:separator], arguments[separator + 1:]


def systemd_plan(system: bool, **kwargs: Any) -> render.Plan:
    return render.make_plan(install_spec.resolve_spec("systemd", system=system, for_this_host=False, **kwargs))
