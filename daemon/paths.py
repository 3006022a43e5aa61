"""Default locations: config file, state directory (journal, pid file) and logs, per platform.

A process running as root uses the system locations; anyone else the per-user ones. Each
function takes `root`: None asks the running process (its effective uid), True or False
gives the answer for that domain whoever asks (`soakd service install --system --dry-run`
run by a user renders root's paths).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = "soakd"


def is_root() -> bool:
    """Whether this process runs with effective uid 0 (False where there are no uids)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _root(root: bool | None) -> bool:
    return is_root() if root is None else root


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def _macos_base(root: bool) -> Path:
    return Path("/Library") if root else Path.home() / "Library"


def default_config_path(root: bool | None = None) -> Path:
    """macOS: ~/Library/Application Support/soakd/soakd.toml (root: /Library/...);
    Linux: $XDG_CONFIG_HOME/soakd/soakd.toml (root: /etc/soakd/soakd.toml)."""
    if sys.platform == "darwin":
        return _macos_base(_root(root)) / "Application Support" / APP / f"{APP}.toml"
    if _root(root):
        return Path("/etc") / APP / f"{APP}.toml"
    return _xdg("XDG_CONFIG_HOME", ".config") / APP / f"{APP}.toml"


def default_state_dir(root: bool | None = None) -> Path:
    """Journal and pid file. macOS: ~/Library/Application Support/soakd (root: /Library/...);
    Linux: $XDG_STATE_HOME/soakd (root: /var/lib/soakd)."""
    if sys.platform == "darwin":
        return _macos_base(_root(root)) / "Application Support" / APP
    if _root(root):
        return Path("/var/lib") / APP
    return _xdg("XDG_STATE_HOME", ".local/state") / APP


def default_log_dir(root: bool | None = None) -> Path:
    """Where launchd's StandardOutPath/StandardErrorPath point. macOS: ~/Library/Logs/soakd
    (root: /Library/Logs/soakd); Linux: the state directory's logs/ (systemd uses the journal)."""
    if sys.platform == "darwin":
        return _macos_base(_root(root)) / "Logs" / APP
    return default_state_dir(root) / "logs"
