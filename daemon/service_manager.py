"""Install, remove and inspect soakd as a launchd job (macOS) or a systemd unit (Linux).

The templates live in launchd/ (see launchd/README.md for the privilege model and why each
key has its value). Everything that touches the machine goes through two seams so tests never
do: every file path can be moved under a `prefix` (DESTDIR-style), and every command runs
through a `Runner`.

This module also holds the launchd supervisor (`python -m daemon.service_manager supervise`),
the job's real ProgramArguments: it runs `soakd run`, forwards signals to it, turns exit 78
(EX_CONFIG) into 0 so that KeepAlive {SuccessfulExit: false} does not restart-loop on a
permanent error, and reopens the log files after newsyslog moves them aside. It imports only
the standard library and daemon.paths, so it starts fast and stays small.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Literal, Protocol, TextIO

from daemon import paths

Manager = Literal["launchd", "systemd"]
MANAGERS: tuple[Manager, ...] = ("launchd", "systemd")

EX_CONFIG = 78  # what `soakd run` exits with on a permanent configuration error
# `soakd run` stops within 10 s of SIGTERM; 30 s leaves 3x for a hot, memory-starved machine
# before launchd/systemd SIGKILL it (the journal then loses at most the slice in progress).
EXIT_TIMEOUT_S = 30
# A job that keeps dying at start is retried once a minute (launchd's default is 10 s): each
# start imports torch, costing seconds of CPU that would disturb the machine being measured.
THROTTLE_INTERVAL_S = 60

AGENT_LABEL = "com.soakd.agent"
DAEMON_LABEL = "com.soakd.daemon"
UNIT_NAME = "soakd.service"

POWERMETRICS = "/usr/bin/powermetrics"

# newsyslog signals the supervisor with this after moving a log file aside. SIGWINCH is 28 on
# macOS and Linux and ignored by default, so a stale pid file cannot hurt another process.
REOPEN_SIGNAL = signal.SIGWINCH
FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
)


class ServiceError(Exception):
    """Something the service manager or this host refused; reported as one line."""


# --------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[[Sequence[str]], CommandResult]


def subprocess_runner(argv: Sequence[str]) -> CommandResult:
    """The real runner: run the command, capture its output, never raise."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except OSError as exc:
        return CommandResult(127, "", f"{argv[0]}: {exc.strerror or exc}")
    return CommandResult(done.returncode, done.stdout, done.stderr)


def detect_manager(platform: str | None = None, root: Path = Path("/")) -> Manager:
    """launchd on macOS; systemd on Linux when it is PID 1 (sd_booted's test); else an error."""
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


# --------------------------------------------------------------------------------------------
# What to install


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the templates need; all paths absolute, as they will be on the target host."""

    manager: Manager
    system: bool
    python: Path
    state_dir: Path
    config: Path | None
    log_dir: Path
    user: str
    group: str
    uid: int
    pythonpath: str | None = None

    @property
    def label(self) -> str:
        return DAEMON_LABEL if self.system else AGENT_LABEL

    @property
    def launchd_domain(self) -> str:
        return "system" if self.system else f"gui/{self.uid}"

    @property
    def launchd_target(self) -> str:
        return f"{self.launchd_domain}/{self.label}"

    @property
    def run_command(self) -> list[str]:
        """`soakd run` through this very interpreter, so the service gets this environment."""
        argv = [str(self.python), "-m", "daemon.cli", "run", "--state-dir", str(self.state_dir)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        return argv


@dataclass(frozen=True)
class RenderedFile:
    path: Path  # where it goes on the target host (before any prefix)
    content: str
    mode: int


@dataclass(frozen=True)
class Plan:
    spec: ServiceSpec
    files: tuple[RenderedFile, ...]  # written by `install`
    # Files that need root although the service does not (LaunchAgent): staged beside the
    # state, with the sudo commands printed, since `service install` never escalates itself.
    root_files: tuple[tuple[RenderedFile, RenderedFile], ...] = ()  # (staged, final)
    directories: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def service_file(self) -> RenderedFile:
        return self.files[0]


def _current_user() -> tuple[str, str, int]:
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


@contextlib.contextmanager
def _paths_for(root: bool) -> Iterator[None]:
    """daemon.paths answers for the current euid; a --system --dry-run/--prefix by a user needs
    root's answers. (A `root=` parameter in daemon.paths would make this unnecessary.)"""
    original = paths._is_root
    setattr(paths, "_is_root", lambda: root)  # noqa: B010 - a module function, restored below
    try:
        yield
    finally:
        setattr(paths, "_is_root", original)  # noqa: B010


def service_pythonpath(package_file: str, sys_path: Sequence[str], environ: Mapping[str, str],
                       cwd: str) -> str | None:
    """The source root to put on PYTHONPATH when `daemon` is importable here only because of
    the current directory or PYTHONPATH (a checkout, not installed): the service starts
    elsewhere. None when it is installed (site-packages, a .pth or an editable finder)."""
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
    service (nothing is installed); otherwise the domain must match who runs this.
    """
    is_root = os.geteuid() == 0
    if not system and is_root:
        raise ServiceError("running as root: use --system for the system-wide service (a "
                           "per-user service for root is not what you want), or run as the user")
    if system and not is_root and for_this_host:
        raise ServiceError("installing the system service needs root: run it with sudo, "
                           "or use --dry-run/--prefix to only render the files")
    interpreter = python if python is not None else sys.executable
    if not interpreter or not os.path.isabs(interpreter) or not os.path.exists(interpreter):
        raise ServiceError(f"cannot find the running Python interpreter ({interpreter!r})")
    with _paths_for(system):
        default_state = paths.default_state_dir()
        default_config = paths.default_config_path()
        default_logs = paths.default_log_dir()
    if config is None and default_config.exists():
        config = default_config  # pin it; with no file at all the daemon runs on its defaults
    if system:
        user, group, uid = "root", ("wheel" if manager == "launchd" else "root"), 0
    else:
        user, group, uid = _current_user()
    return ServiceSpec(
        manager=manager,
        system=system,
        python=Path(interpreter),  # not resolved: a venv's python is a symlink that must stay one
        state_dir=Path(state_dir or default_state).absolute(),
        config=config.absolute() if config is not None else None,
        log_dir=Path(log_dir or default_logs).absolute(),
        user=user,
        group=group,
        uid=uid,
        pythonpath=service_pythonpath(str(Path(__file__).with_name("__init__.py")), sys.path,
                                      os.environ, os.getcwd()),
    )


# --------------------------------------------------------------------------------------------
# Templates


_PLACEHOLDER = re.compile(r"@([A-Z][A-Z_]*)@")


def template_dir() -> Path:
    """launchd/ beside the package (a checkout or an editable install), else daemon/templates/
    (where a wheel build would have to copy them: pyproject ships daemon/templates/*)."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "launchd", package / "templates"):
        if (candidate / f"{AGENT_LABEL}.plist.in").is_file():
            return candidate
    raise ServiceError(f"service templates not found (looked in {package.parent / 'launchd'} "
                       f"and {package / 'templates'})")


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace every @NAME@; a placeholder without a value, or a value without a placeholder,
    is a bug in the template or here, so both are errors."""
    used: set[str] = set()

    def _used(match: re.Match[str]) -> str:
        used.add(match.group(1))
        return ""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise ServiceError(f"template placeholder @{name}@ has no value")
        used.add(name)
        return values[name]

    # A placeholder alone on its line that renders empty takes its line with it.
    template = re.sub(r"(?m)^[ \t]*@([A-Z][A-Z_]*)@[ \t]*\n",
                      lambda m: m.group(0) if values.get(m.group(1), "x") else _used(m), template)
    text = _PLACEHOLDER.sub(substitute, template)
    unused = set(values) - used
    if unused:
        raise ServiceError(f"template has no placeholder for {', '.join(sorted(unused))}")
    return text


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _plist_strings(items: Sequence[str], indent: str) -> str:
    return "\n".join(f"{indent}<string>{_xml(item)}</string>" for item in items)


def _systemd_word(word: str) -> str:
    """One ExecStart word: quoted when needed; % and $ are specifiers/variables to systemd."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if not escaped or re.search(r'[\s"\'\\;]', escaped):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def _systemd_path(path: Path) -> str:
    """A whole-line path setting (WorkingDirectory=): spaces are fine, % is a specifier."""
    text = str(path)
    if re.search(r"[\x00-\x1f]", text):
        raise ServiceError(f"{text!r}: a control character cannot go into a systemd unit")
    return text.replace("%", "%%")


def _newsyslog_field(path: Path) -> str:
    """newsyslog.conf splits on whitespace and cuts at '#': such paths cannot be written."""
    text = str(path)
    if re.search(r"[\s#]", text):
        raise ServiceError(f"{text!r}: newsyslog cannot rotate a path with spaces or '#'; "
                           "choose another log directory")
    return text


def _sudoers_user(user: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", user):
        raise ServiceError(f"user name {user!r} needs sudoers quoting; write the rule by hand")
    return user


def powermetrics_argv() -> list[str]:
    """The one command line the sudoers rule allows (sudo matches arguments exactly): what the
    powermetrics source runs under `sudo -n` with its defaults. Free arguments would let the
    user write any file as root (`-o FILE`)."""
    import inspect

    from daemon.sources.powermetrics import (
        DEFAULT_SAMPLERS,
        PowermetricsSource,
        powermetrics_command,
    )

    interval = inspect.signature(PowermetricsSource).parameters["interval_ms"].default
    return powermetrics_command(interval, DEFAULT_SAMPLERS, POWERMETRICS, sudo=False)


def _sudoers_command(argv: Sequence[str]) -> str:
    """In sudoers `,` separates commands and `:`, `=` and `\\` are special: escape them in
    arguments (visudo caught the sampler list's commas)."""
    return " ".join(re.sub(r"([\\,:=])", r"\\\1", word) for word in argv)


def _file_stem(user: str) -> str:
    # sudo ignores /etc/sudoers.d files whose names contain '.' (or end in '~').
    return re.sub(r"[^A-Za-z0-9_-]", "_", user)


def supervisor_command(spec: ServiceSpec) -> list[str]:
    log_dir = spec.log_dir
    return [
        str(spec.python), "-m", "daemon.service_manager", "supervise",
        "--stdout", str(log_dir / "soakd.log"),
        "--stderr", str(log_dir / "soakd.err.log"),
        "--pid-file", str(log_dir / "supervisor.pid"),
        "--hint", f"launchctl kickstart -k {spec.launchd_target}",
        "--", *spec.run_command,
    ]


def sudoers_path(spec: ServiceSpec) -> Path:
    return Path("/etc/sudoers.d") / f"soakd-{_file_stem(spec.user)}"


def newsyslog_path(spec: ServiceSpec) -> Path:
    name = "soakd.conf" if spec.system else f"soakd-{_file_stem(spec.user)}.conf"
    return Path("/etc/newsyslog.d") / name


def launchd_plan(spec: ServiceSpec, templates: Path | None = None) -> Plan:
    templates = templates or template_dir()
    stdout_path = spec.log_dir / "soakd.log"
    stderr_path = spec.log_dir / "soakd.err.log"
    pid_file = spec.log_dir / "supervisor.pid"
    environment = ""
    if spec.pythonpath:
        environment = (f"\t\t<key>PYTHONPATH</key>\n"
                       f"\t\t<string>{_xml(spec.pythonpath)}</string>")
    plist_values = {
        "LABEL": spec.label,
        "PROGRAM_ARGUMENTS": _plist_strings(supervisor_command(spec), "\t\t"),
        "WORKING_DIRECTORY": _xml(str(spec.state_dir)),
        "ENVIRONMENT": environment,
        "EXIT_TIMEOUT": str(EXIT_TIMEOUT_S),
        "THROTTLE_INTERVAL": str(THROTTLE_INTERVAL_S),
        "STDOUT_PATH": _xml(str(stdout_path)),
        "STDERR_PATH": _xml(str(stderr_path)),
    }
    if spec.system:
        plist_path = Path("/Library/LaunchDaemons") / f"{spec.label}.plist"
    else:
        plist_path = Path.home() / "Library" / "LaunchAgents" / f"{spec.label}.plist"
    plist = RenderedFile(plist_path, render(_read(templates / f"{spec.label}.plist.in"),
                                            plist_values), 0o644)

    newsyslog_final = newsyslog_path(spec)
    newsyslog = render(_read(templates / "newsyslog.d" / "soakd.conf.in"), {
        "INSTALL_PATH": str(newsyslog_final),
        "STDOUT_PATH": _newsyslog_field(stdout_path),
        "STDERR_PATH": _newsyslog_field(stderr_path),
        "OWNER": f"{spec.user}:{spec.group}",
        "PID_FILE": _newsyslog_field(pid_file),
        "SIGNAL": str(int(REOPEN_SIGNAL)),
    })
    directories = (spec.state_dir, spec.log_dir)
    if spec.system:
        # As root nothing needs escalating, and the daemon needs no sudoers rule.
        return Plan(spec, (plist, RenderedFile(newsyslog_final, newsyslog, 0o644)),
                    directories=directories)

    sudoers_final = sudoers_path(spec)
    powermetrics = powermetrics_argv()
    sudoers = render(_read(templates / "soakd.sudoers.in"), {
        "USER": _sudoers_user(spec.user),
        "INSTALL_PATH": str(sudoers_final),
        "POWERMETRICS": _sudoers_command(powermetrics),
        "COMMAND_LINE": shlex.join(powermetrics),
    })
    staging = spec.state_dir / "service"
    root_files = (
        (RenderedFile(staging / sudoers_final.name, sudoers, 0o440),
         RenderedFile(sudoers_final, sudoers, 0o440)),
        (RenderedFile(staging / newsyslog_final.name, newsyslog, 0o644),
         RenderedFile(newsyslog_final, newsyslog, 0o644)),
    )
    return Plan(spec, (plist,), root_files=root_files, directories=(*directories, staging))


def systemd_unit_path(spec: ServiceSpec) -> Path:
    if spec.system:
        return Path("/etc/systemd/system") / UNIT_NAME
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user" / UNIT_NAME


def systemd_plan(spec: ServiceSpec, templates: Path | None = None) -> Plan:
    templates = templates or template_dir()
    template = "soakd.service.in" if spec.system else "soakd-user.service.in"
    environment = ""
    if spec.pythonpath:
        environment = f"Environment={_systemd_word('PYTHONPATH=' + spec.pythonpath)}"
    unit = render(_read(templates / "systemd" / template), {
        "EXEC_START": " ".join(_systemd_word(word) for word in spec.run_command),
        "WORKING_DIRECTORY": _systemd_path(spec.state_dir),
        "ENVIRONMENT": environment,
        "TIMEOUT_STOP": str(EXIT_TIMEOUT_S),
        "RESTART_SEC": str(THROTTLE_INTERVAL_S),
    })
    notes: tuple[str, ...] = ()
    if not spec.system:
        notes = (f"to keep it running while {spec.user} is logged out: "
                 f"sudo loginctl enable-linger {shlex.quote(spec.user)}",)
    # Logs go to the journal (journalctl [--user] -u soakd): no log directory, no rotation file.
    return Plan(spec, (RenderedFile(systemd_unit_path(spec), unit, 0o644),),
                directories=(spec.state_dir,), notes=notes)


def make_plan(spec: ServiceSpec, templates: Path | None = None) -> Plan:
    if spec.manager == "launchd":
        return launchd_plan(spec, templates)
    return systemd_plan(spec, templates)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServiceError(f"cannot read template {path}: {exc.strerror}") from None


# --------------------------------------------------------------------------------------------
# Install / uninstall / status


def under(prefix: Path | None, path: Path) -> Path:
    """`path` as seen on this host: moved under `prefix` when one is given (DESTDIR-style)."""
    return prefix / path.relative_to(path.anchor) if prefix is not None else path


def _write(path: Path, content: str, mode: int) -> None:
    """Atomically: launchd or systemd must never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(content, encoding="utf-8")
        os.chmod(tmp, mode)  # explicit: launchd refuses group/world-writable job files
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _systemctl(spec: ServiceSpec, *args: str) -> list[str]:
    return ["systemctl", *(() if spec.system else ("--user",)), *args]


def activation_commands(plan: Plan) -> list[tuple[list[str], str]]:
    """What `install` runs after writing the files, each with the condition it runs under
    ("" = always): the nominal sequence that --dry-run and --prefix print."""
    spec = plan.spec
    if spec.manager == "launchd":
        return [
            (["launchctl", "bootout", spec.launchd_target], "if it is loaded"),
            (["launchctl", "enable", spec.launchd_target], ""),
            (["launchctl", "bootstrap", spec.launchd_domain, str(plan.service_file.path)], ""),
        ]
    return [
        (_systemctl(spec, "daemon-reload"), ""),
        (_systemctl(spec, "enable", "--now", UNIT_NAME), ""),
        (_systemctl(spec, "restart", UNIT_NAME), "if it was running (on the old definition)"),
    ]


def _describe(argv: Sequence[str], condition: str) -> str:
    return shlex.join(argv) + (f"  ({condition})" if condition else "")


def deactivation_commands(plan: Plan) -> list[list[str]]:
    spec = plan.spec
    if spec.manager == "launchd":
        return [["launchctl", "bootout", spec.launchd_target]]
    return [_systemctl(spec, "disable", "--now", UNIT_NAME)]


def root_instructions(plan: Plan) -> list[str]:
    """The sudo commands that finish a LaunchAgent install (sudoers rule, log rotation)."""
    lines = []
    for staged, final in plan.root_files:
        q_staged, q_final = shlex.quote(str(staged.path)), shlex.quote(str(final.path))
        install = f"sudo install -m {final.mode:04o} -o root -g wheel {q_staged} {q_final}"
        if final.path.parent.name == "sudoers.d":
            lines.append(f"sudo visudo -cf {q_staged} && {install}")  # a broken rule breaks sudo
        else:
            lines.append(install)
    return lines


class Reporter:
    """Where install/uninstall say what they do (stdout in the CLI, a list in tests)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def __call__(self, line: str) -> None:
        print(line, file=self.stream)


def _run(runner: Runner, argv: Sequence[str], say: Callable[[str], None],
         check: bool = True) -> CommandResult:
    result = runner(argv)
    say(f"ran: {shlex.join(argv)} (exit {result.returncode})")
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        reason = detail[-1] if detail else "no output"
        raise ServiceError(f"`{shlex.join(argv)}` failed with exit {result.returncode}: {reason}")
    return result


def install(plan: Plan, *, runner: Runner = subprocess_runner, prefix: Path | None = None,
            activate: bool = True, dry_run: bool = False, say: Callable[[str], None] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> None:
    """Write the files (under `prefix`), then load and start the service through `runner`.
    `activate=False` writes only (packagers); `dry_run` writes and runs nothing."""
    say = say or Reporter()
    spec = plan.spec
    if dry_run:
        for rendered in (*plan.files, *(staged for staged, _ in plan.root_files)):
            say(f"would write {under(prefix, rendered.path)} (mode {rendered.mode:04o}):")
            say(rendered.content.rstrip("\n"))
            say("")
        for argv, condition in activation_commands(plan) if activate else []:
            say(f"would run: {_describe(argv, condition)}")
        for line in root_instructions(plan):
            say(f"then, as root: {line}")
        return

    was_active = False
    if activate and spec.manager == "systemd":
        # `enable --now` leaves a running unit on its old definition: restart it after.
        was_active = runner(_systemctl(spec, "is-active", "--quiet", UNIT_NAME)).returncode == 0
    for directory in plan.directories:
        under(prefix, directory).mkdir(parents=True, exist_ok=True)
    for rendered in (*plan.files, *(staged for staged, _ in plan.root_files)):
        _write(under(prefix, rendered.path), rendered.content, rendered.mode)
        say(f"wrote {under(prefix, rendered.path)}")

    if not activate:
        for argv, condition in activation_commands(plan):
            say(f"not run (files only): {_describe(argv, condition)}")
    elif spec.manager == "launchd":
        _activate_launchd(plan, runner, say, sleep)
    else:
        _run(runner, _systemctl(spec, "daemon-reload"), say)
        _run(runner, _systemctl(spec, "enable", "--now", UNIT_NAME), say)
        if was_active:
            _run(runner, _systemctl(spec, "restart", UNIT_NAME), say)

    lines = root_instructions(plan)
    if lines:
        say("to finish (needs root once: powermetrics without a password, log rotation):")
        for line in lines:
            say(f"  {line}")
    for note in plan.notes:
        say(note)


def _activate_launchd(plan: Plan, runner: Runner, say: Callable[[str], None],
                      sleep: Callable[[float], None]) -> None:
    spec = plan.spec
    if runner(["launchctl", "print", spec.launchd_target]).returncode == 0:
        _run(runner, ["launchctl", "bootout", spec.launchd_target], say, check=False)
    # A job once disabled (launchctl disable) would refuse to bootstrap.
    _run(runner, ["launchctl", "enable", spec.launchd_target], say, check=False)
    bootstrap = ["launchctl", "bootstrap", spec.launchd_domain, str(plan.service_file.path)]
    # Right after a bootout the old job may still be exiting ("Bootstrap failed: 5"): retry.
    for attempt in range(3):
        result = _run(runner, bootstrap, say, check=attempt == 2)
        if result.returncode == 0:
            return
        sleep(2.0)


def uninstall(plan: Plan, *, runner: Runner = subprocess_runner, prefix: Path | None = None,
              activate: bool = True, dry_run: bool = False,
              say: Callable[[str], None] | None = None) -> None:
    """Stop and unload the service, remove what `install` wrote. Logs and the journal stay."""
    say = say or Reporter()
    spec = plan.spec
    removable = [*plan.files, *(staged for staged, _ in plan.root_files)]
    if dry_run:
        for argv in deactivation_commands(plan) if activate else []:
            say(f"would run: {shlex.join(argv)}")
        for rendered in removable:
            say(f"would remove {under(prefix, rendered.path)}")
        return
    if activate:
        for argv in deactivation_commands(plan):
            # Not loaded is fine: uninstall finishes what a half install or reboot left.
            _run(runner, argv, say, check=False)
    for rendered in removable:
        target = under(prefix, rendered.path)
        if target.exists():
            target.unlink()
            say(f"removed {target}")
    if activate and spec.manager == "systemd":
        _run(runner, _systemctl(spec, "daemon-reload"), say)
        _run(runner, _systemctl(spec, "reset-failed", UNIT_NAME), say, check=False)
    left = [final for _, final in plan.root_files if under(prefix, final.path).exists()]
    if left:
        say("still installed (needs root to remove):")
        say("  sudo rm -f " + " ".join(shlex.quote(str(final.path)) for final in left))
    kept = f"{spec.state_dir} (journal)"
    if spec.manager == "launchd":
        kept += f" and {spec.log_dir} (logs)"
    say(f"kept: {kept}")


def status(plan: Plan, *, runner: Runner | None = subprocess_runner,
           prefix: Path | None = None, say: Callable[[str], None] | None = None) -> int:
    """Print the installed files and the service manager's view; 0 if it is loaded/active,
    3 if not (the LSB 'not running' code), as `systemctl status` does. With no runner
    (a --prefix tree), only the files: 0 if the job file is there."""
    say = say or Reporter()
    spec = plan.spec
    for rendered in (*plan.files, *(final for _, final in plan.root_files)):
        present = "present" if under(prefix, rendered.path).exists() else "missing"
        say(f"{present}: {under(prefix, rendered.path)}")
    if runner is None:
        return 0 if under(prefix, plan.service_file.path).exists() else 3
    if spec.manager == "launchd":
        result = runner(["launchctl", "print", spec.launchd_target])
    else:
        result = runner(_systemctl(spec, "status", "--no-pager", "--lines=10", UNIT_NAME))
    output = (result.stdout + result.stderr).rstrip("\n")
    if output:
        say(output)
    if spec.manager == "launchd":
        if result.returncode == 0:
            return 0
        say(f"{spec.launchd_target} is not loaded")
        return 3
    return 0 if result.returncode == 0 else 3


# --------------------------------------------------------------------------------------------
# The launchd supervisor


class _Writable(Protocol):
    def write(self, text: str, /) -> int: ...
    def flush(self) -> None: ...


def _log_line(stream: _Writable, level: str, event: str, **fields: object) -> None:
    """JSON lines, like the daemon's own structlog output in the same file."""
    record = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
              "level": level, "logger": "soakd.supervisor", "event": event, **fields}
    stream.write(json.dumps(record) + "\n")
    stream.flush()


class _LogTarget:
    """One of our own stdout/stderr descriptors, bound to a path it is reopened on after a
    rotation (on REOPEN_SIGNAL, or when the path no longer names the open file)."""

    CHECK_EVERY_S = 5.0

    def __init__(self, fd: int, path: Path | None) -> None:
        self.fd = fd
        self.path = path
        self.reopen_requested = threading.Event()
        self.lock = threading.Lock()
        self.checked = time.monotonic()

    def write(self, data: bytes) -> None:
        with self.lock:
            self._maybe_reopen()
            view = memoryview(data)
            while view:
                try:
                    written = os.write(self.fd, view)
                except OSError:
                    return  # a log that cannot be written must not take the service down
                view = view[written:]

    def _maybe_reopen(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not self.reopen_requested.is_set() and now - self.checked < self.CHECK_EVERY_S:
            return
        self.checked = now
        self.reopen_requested.clear()
        try:
            current = os.fstat(self.fd)
            on_disk = os.stat(self.path)
            if (current.st_dev, current.st_ino) == (on_disk.st_dev, on_disk.st_ino):
                return
        except OSError:
            pass  # moved away and not recreated yet, or fd closed: open the path afresh
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError:
            return
        os.dup2(new, self.fd)
        os.close(new)


def _pump(source: int, target: _LogTarget) -> None:
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:
            break
        if not chunk:
            break
        target.write(chunk)
    os.close(source)


def supervise(command: Sequence[str], *, stdout_path: Path | None = None,
              stderr_path: Path | None = None, pid_file: Path | None = None,
              hint: str | None = None) -> int:
    """Run `command`; forward signals; map its exit for launchd (see the module docstring).

    Exit status: the child's, except 78 → 0 (permanent config error: do not restart) and a
    death by SIGTERM/SIGINT that we forwarded → 0 (a requested stop).
    """
    out = _LogTarget(1, stdout_path)
    err = _LogTarget(2, stderr_path)
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []
    stop_requested = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_requested
        if signum in (signal.SIGTERM, signal.SIGINT):
            stop_requested = True
        if child is None:
            pending.append(signum)
        elif child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    def reopen(signum: int, frame: FrameType | None) -> None:
        out.reopen_requested.set()
        err.reopen_requested.set()

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    signal.signal(REOPEN_SIGNAL, reopen)
    err_stream = _FdTextStream(err)

    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        _write(pid_file, f"{os.getpid()}\n", 0o644)
    pumps: list[threading.Thread] = []
    try:
        try:
            # Pipes only when there are paths to reopen; else the child shares our descriptors.
            child = subprocess.Popen(
                list(command),
                stdout=subprocess.PIPE if stdout_path else None,
                stderr=subprocess.PIPE if stderr_path else None,
            )
        except OSError as exc:
            _log_line(err_stream, "error", "cannot start soakd run", command=list(command),
                      error=str(exc))
            return 127
        for pipe, target in ((child.stdout, out), (child.stderr, err)):
            if pipe is not None:
                thread = threading.Thread(target=_pump, args=(os.dup(pipe.fileno()), target),
                                          daemon=True)
                pipe.close()
                thread.start()
                pumps.append(thread)
        for queued in pending:
            forward(queued, None)
        returncode = child.wait()
        # Drain what it wrote last (its one-line config error). A worker that outlives it may
        # hold the pipe open: do not wait for that forever.
        for thread in pumps:
            thread.join(timeout=2.0)
    finally:
        if pid_file is not None:
            with contextlib.suppress(OSError):
                if pid_file.read_text().strip() == str(os.getpid()):
                    pid_file.unlink()

    if returncode == EX_CONFIG:
        _log_line(err_stream, "error",
                  "soakd run exited 78 (EX_CONFIG): the configuration is wrong, see the error "
                  "above; not restarting until it is fixed" + (f": then {hint}" if hint else ""),
                  exit_code=returncode)
        return 0
    if returncode < 0:
        try:
            signame = signal.Signals(-returncode).name
        except ValueError:
            signame = f"signal {-returncode}"
        if stop_requested and -returncode in (signal.SIGTERM, signal.SIGINT):
            return 0
        _log_line(err_stream, "error", f"soakd run was killed by {signame}; launchd restarts it",
                  signal=signame)
        return 128 - returncode
    if returncode != 0:
        _log_line(err_stream, "error", f"soakd run exited {returncode}; launchd restarts it",
                  exit_code=returncode)
    return returncode


class _FdTextStream:
    """A minimal text stream over a _LogTarget, so the supervisor's own lines also follow a
    rotation."""

    def __init__(self, target: _LogTarget) -> None:
        self.target = target

    def write(self, text: str) -> int:
        self.target.write(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m daemon.service_manager",
        description="launchd supervisor for `soakd run` (see launchd/README.md)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("supervise", help="run a command as the launchd job's main process")
    run.add_argument("--stdout", type=Path, help="StandardOutPath, reopened after rotation")
    run.add_argument("--stderr", type=Path, help="StandardErrorPath, reopened after rotation")
    run.add_argument("--pid-file", type=Path, help="our pid, for newsyslog's signal")
    run.add_argument("--hint", help="how to restart after fixing the config")
    run.add_argument("argv", nargs=argparse.REMAINDER, help="-- the command to run")
    args = parser.parse_args(argv)
    command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not command:
        parser.error("no command given after --")
    return supervise(command, stdout_path=args.stdout, stderr_path=args.stderr,
                     pid_file=args.pid_file, hint=args.hint)


if __name__ == "__main__":
    sys.exit(main())
