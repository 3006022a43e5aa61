"""Default locations: config file, state directory (journal, pid file) and logs, per platform.

A process running as root uses the system locations; anyone else the per-user ones.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP = "soakd"


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def default_config_path() -> Path:
    """macOS: ~/Library/Application Support/soakd/soakd.toml (root: /Library/...);
    Linux: $XDG_CONFIG_HOME/soakd/soakd.toml (root: /etc/soakd/soakd.toml)."""
    if sys.platform == "darwin":
        base = Path("/Library") if _is_root() else Path.home() / "Library"
        return base / "Application Support" / APP / f"{APP}.toml"
    if _is_root():
        return Path("/etc") / APP / f"{APP}.toml"
    return _xdg("XDG_CONFIG_HOME", ".config") / APP / f"{APP}.toml"


def default_state_dir() -> Path:
    """Journal and pid file. macOS: ~/Library/Application Support/soakd (root: /Library/...);
    Linux: $XDG_STATE_HOME/soakd (root: /var/lib/soakd)."""
    if sys.platform == "darwin":
        base = Path("/Library") if _is_root() else Path.home() / "Library"
        return base / "Application Support" / APP
    if _is_root():
        return Path("/var/lib") / APP
    return _xdg("XDG_STATE_HOME", ".local/state") / APP


def default_log_dir() -> Path:
    """Where launchd's StandardOutPath/StandardErrorPath point. macOS: ~/Library/Logs/soakd
    (root: /Library/Logs/soakd); Linux: the state directory's logs/ (systemd uses the journal)."""
    if sys.platform == "darwin":
        base = Path("/Library") if _is_root() else Path.home() / "Library"
        return base / "Logs" / APP
    return default_state_dir() / "logs"
