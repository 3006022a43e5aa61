"""Fixtures for the service-install tests: a user or root, on a Mac or on Linux, whatever runs them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from daemon.install import spec as install_spec


@pytest.fixture
def user_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An ordinary user (uid 501 'alice') with a temporary home, whatever runs the tests."""
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "SOAKD_CONFIG", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 501)
    monkeypatch.setattr(install_spec, "current_user", lambda: ("alice", "staff", 501))
    return home


@pytest.fixture
def root_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def on_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    # daemon.paths reads sys.platform at call time: this gives the macOS layout.
    monkeypatch.setattr(sys, "platform", "darwin")
