"""What a service install is for: the host's service manager and the job's paths and user.

`resolve_spec` fills a `ServiceSpec` from daemon.paths for the service's domain (per user or
system-wide); everything after it (daemon/install/render.py, manager.py) works from the spec
alone, so tests render any domain for any platform without touching this machine.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon import paths

Manager = Literal["launchd", "systemd"]
MANAGERS: tuple[Manager, ...] = ("launchd", "systemd")

# `soakd run` stops within 10 s of SIGTERM; 30 s leaves 3x for a hot, memory-starved machine
# before launchd/systemd SIGKILL it (the journal then loses at most the slice in progress).
EXIT_TIMEOUT_S = 30
# A job that keeps dying at start is retried once a minute (launchd's default is 10 s): each
# start imports torch, costing seconds of CPU that would disturb the machine being measured.
THROTTLE_INTERVAL_S = 60
# Open files allowed to the daemon (systemd LimitNOFILE, launchd NumberOfFiles). The metrics
# server bounds its connections; this leaves room for them plus the journal, the sources'
# files and the worker pipes. Linux's default soft limit is 1024 already; macOS gives a
# launchd job 256, which 50 concurrent scrapers plus workers could exhaust.
OPEN_FILES_LIMIT = 1024

AGENT_LABEL = "com.soakd.agent"
DAEMON_LABEL = "com.soakd.daemon"
UNIT_NAME = "soakd.service"


class ServiceError(Exception):
    """Something the service manager or this host refused; reported as one line, exit 1."""


def detect_manager(platform: str | None = None, root: Path = Path("/")) -> Manager:
    """launchd on macOS; systemd on Linux when it is PID 1 (sd_booted's test: the directory
    /run/systemd/system exists under `root`). Raises ServiceError anywhere else."""
    platform = sys.platform if platform is None else platform
    if platform == "darwin":
        return "launchd"
    if platform.startswith("linux"):
        if (root / "run/systemd/system").is_dir():
            return "systemd"
        raise ServiceError("no supported service manager: this Linux host is not running systemd "
                           "(/run/systemd/system is missing); run `soakd run` under your own "
                           "supervisor, or pass --manager with --dry-run/--prefix to only render")
    raise ServiceError(f"no supported service manager on {platform!r} (launchd on macOS and "
                       "systemd on Linux are)")


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the job files need; all paths absolute, as they will be on the target host."""

    manager: Manager
    system: bool  # a LaunchDaemon / system unit (root) rather than a LaunchAgent / user unit
    python: Path  # the interpreter the job runs (not resolved: a venv's python stays a symlink)
    state_dir: Path
    config: Path | None  # pinned config file; None: the daemon's defaults
    log_dir: Path  # launchd's StandardOutPath/StandardErrorPath directory (unused by systemd)
    user: str
    group: str
    uid: int
    pythonpath: str | None = None  # a checkout's source root when `daemon` is not installed

    @property
    def label(self) -> str:
        """The launchd job label: com.soakd.daemon for the system job, else com.soakd.agent."""
        return DAEMON_LABEL if self.system else AGENT_LABEL

    @property
    def launchd_domain(self) -> str:
        """`system`, or the user's GUI domain `gui/<uid>`."""
        return "system" if self.system else f"gui/{self.uid}"

    @property
    def launchd_target(self) -> str:
        """The service target launchctl takes: `<domain>/<label>`."""
        return f"{self.launchd_domain}/{self.label}"

    @property
    def run_command(self) -> list[str]:
        """`soakd run` through this very interpreter, so the service gets this environment."""
        argv = [str(self.python), "-m", "daemon.cli", "run", "--state-dir", str(self.state_dir)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv


def current_user() -> tuple[str, str, int]:
    """(user name, primary group name, uid) of this process; numbers where a name is missing."""
    uid = os.getuid()
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return str(uid), str(os.getgid()), uid
    try:
        group = grp.getgrgid(entry.pw_gid).gr_name
    except KeyError:
        group = str(entry.pw_gid)
    return entry.pw_name, group, uid


def service_pythonpath(package_file: str, sys_path: Sequence[str], environ: Mapping[str, str],
                       cwd: str) -> str | None:
    """The source root to put on PYTHONPATH when `daemon` is importable here only because of
    the current directory or PYTHONPATH (a checkout, not installed): the service starts
    elsewhere. None when it is installed (site-packages, a .pth or an editable finder).

    `package_file` is daemon/__init__.py's path; the other arguments are sys.path,
    os.environ and os.getcwd(), passed in so tests can vary them.
    """
    package_dir = Path(package_file).parent
    source_root = package_dir.parent
    from_environment = {entry for entry in environ.get("PYTHONPATH", "").split(os.pathsep) if entry}
    for entry in sys_path:
        candidate = Path(entry or cwd) / "daemon"
        try:
            if not candidate.is_dir() or not candidate.samefile(package_dir):
                continue
        except OSError:
            continue
        if entry in ("", cwd) or entry in from_environment:
            return str(source_root)
        return None
    return None


def resolve_spec(manager: Manager, *, system: bool, config: Path | None = None,
                 state_dir: Path | None = None, log_dir: Path | None = None,
                 python: str | None = None, for_this_host: bool = True) -> ServiceSpec:
    """Fill in the defaults from daemon.paths for the service's domain.

    `for_this_host` is False for --dry-run/--prefix: then a user may render the system
    service (nothing is installed); otherwise the domain must match who runs this. An existing
    default config file is pinned with --config. Raises ServiceError for root without
    `system`, `system` without root (for this host), or no usable interpreter.
    """
    is_root = paths.is_root()
    if not system and is_root:
        raise ServiceError("running as root: use --system for the system-wide service (a "
                           "per-user service for root is not what you want), or run as the user")
    if system and not is_root and for_this_host:
        raise ServiceError("installing the system service needs root: run it with sudo, "
                           "or use --dry-run/--prefix to only render the files")
    interpreter = python if python is not None else sys.executable
    if not interpreter or not os.path.isabs(interpreter) or not os.path.exists(interpreter):
        raise ServiceError(f"cannot find the running Python interpreter ({interpreter!r})")
    default_config = paths.default_config_path(root=system)
    if config is None and default_config.exists():
        config = default_config  # pin it; with no file at all the daemon runs on its defaults
    if system:
        user, group, uid = "root", ("wheel" if manager == "launchd" else "root"), 0
    else:
        user, group, uid = current_user()
    package_init = Path(__file__).resolve().parent.parent / "__init__.py"
    return ServiceSpec(
        manager=manager,
        system=system,
        python=Path(interpreter),  # not resolved: a venv's python is a symlink that must stay one
        state_dir=Path(state_dir or paths.default_state_dir(root=system)).absolute(),
        config=config.absolute() if config is not None else None,
        log_dir=Path(log_dir or paths.default_log_dir(root=system)).absolute(),
        user=user,
        group=group,
        uid=uid,
        pythonpath=service_pythonpath(str(package_init), sys.path, os.environ, os.getcwd()),
    )
