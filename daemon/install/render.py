"""The files a service install writes, rendered from a ServiceSpec (nothing is written here).

launchd plists are built as dictionaries and written by `plistlib` (so every value is escaped
by the library, never spliced into XML text). systemd units, the newsyslog rule and the
sudoers rule are jinja2 templates shipped as package data in daemon/install/templates/, with
the systemd- and sudoers-specific quoting done by the filters below. launchd/README.md says
why each key has its value.
"""

from __future__ import annotations

import os
import plistlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from daemon.clitools import EX_CONFIG
from daemon.install.spec import (
    EXIT_TIMEOUT_S,
    OPEN_FILES_LIMIT,
    THROTTLE_INTERVAL_S,
    UNIT_NAME,
    ServiceError,
    ServiceSpec,
)
from daemon.supervisor import REOPEN_SIGNAL

POWERMETRICS = "/usr/bin/powermetrics"


@dataclass(frozen=True)
class RenderedFile:
    """One file of an install: where it goes on the target host (before any --prefix), its
    text and its permission bits."""

    path: Path
    content: str
    mode: int


@dataclass(frozen=True)
class Plan:
    """What `install` writes and runs for one spec."""

    spec: ServiceSpec
    files: tuple[RenderedFile, ...]  # written by `install`; the first is the job file
    # Files that need root although the service does not (LaunchAgent): staged beside the
    # state, with the sudo commands printed, since `service install` never escalates itself.
    root_files: tuple[tuple[RenderedFile, RenderedFile], ...] = ()  # (staged, final)
    directories: tuple[Path, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def service_file(self) -> RenderedFile:
        """The launchd plist or the systemd unit."""
        return self.files[0]


# --- quoting ------------------------------------------------------------------------------------


def systemd_word(word: str) -> str:
    """One ExecStart/Environment word: quoted when needed; % and $ are specifiers/variables to
    systemd, so they are doubled."""
    escaped = word.replace("%", "%%").replace("$", "$$")
    if not escaped or re.search(r'[\s"\'\\;]', escaped):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped


def systemd_path(path: Path | str) -> str:
    """A whole-line path setting (WorkingDirectory=): spaces are fine, % is a specifier.
    Raises ServiceError for a control character, which no unit line can hold."""
    text = str(path)
    if re.search(r"[\x00-\x1f]", text):
        raise ServiceError(f"{text!r}: a control character cannot go into a systemd unit")
    return text.replace("%", "%%")


def newsyslog_field(path: Path) -> str:
    """A path as one newsyslog.conf field. newsyslog splits on whitespace and cuts at '#', so
    such paths raise ServiceError (choose another log directory)."""
    text = str(path)
    if re.search(r"[\s#]", text):
        raise ServiceError(f"{text!r}: newsyslog cannot rotate a path with spaces or '#'; "
                           "choose another log directory")
    return text


def sudoers_user(user: str) -> str:
    """A user name usable unquoted in sudoers; raises ServiceError for anything else."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", user):
        raise ServiceError(f"user name {user!r} needs sudoers quoting; write the rule by hand")
    return user


def sudoers_command(argv: Sequence[str]) -> str:
    """A command line for a sudoers rule. There `,` separates commands and `:`, `=` and `\\`
    are special, so they are escaped in arguments (visudo caught the sampler list's commas)."""
    return " ".join(re.sub(r"([\\,:=])", r"\\\1", word) for word in argv)


def file_stem(user: str) -> str:
    """`user` safe as a drop-in file name: sudo ignores /etc/sudoers.d files whose names
    contain '.' (or end in '~')."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", user)


# --- templates ----------------------------------------------------------------------------------

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("daemon.install", "templates"),
    undefined=jinja2.StrictUndefined,  # a value the template needs and did not get is an error
    autoescape=False,  # unit files and config lines, not HTML: the filters above quote
    keep_trailing_newline=True,
    trim_blocks=True,  # a {% if %} line leaves no blank line behind
)
_TEMPLATES.filters.update(systemd_word=systemd_word, systemd_path=systemd_path)


def render(name: str, values: Mapping[str, Any]) -> str:
    """Template `name` (under daemon/install/templates/) filled with `values`.

    A variable without a value, or a value the template never uses, is a bug in the template
    or here: both raise ServiceError, as does a template that cannot be read.
    """
    try:
        source, _, _ = _TEMPLATES.loader.get_source(_TEMPLATES, name)  # type: ignore[union-attr]
        wanted = jinja2.meta.find_undeclared_variables(_TEMPLATES.parse(source))
        unused = set(values) - wanted
        if unused:
            raise ServiceError(f"template {name} has no placeholder for {', '.join(sorted(unused))}")
        return _TEMPLATES.get_template(name).render(values)
    except jinja2.TemplateNotFound:
        raise ServiceError(f"service template {name} not found in the installed package") from None
    except jinja2.UndefinedError as exc:
        raise ServiceError(f"template {name}: {exc.message}") from None


# --- launchd ------------------------------------------------------------------------------------


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


def supervisor_command(spec: ServiceSpec) -> list[str]:
    """The plist's ProgramArguments: daemon/supervisor.py in front of `soakd run`."""
    log_dir = spec.log_dir
    return [
        str(spec.python), "-m", "daemon.supervisor",
        "--stdout", str(log_dir / "soakd.log"),
        "--stderr", str(log_dir / "soakd.err.log"),
        "--pid-file", str(log_dir / "supervisor.pid"),
        "--hint", f"launchctl kickstart -k {spec.launchd_target}",
        "--", *spec.run_command,
    ]


def sudoers_path(spec: ServiceSpec) -> Path:
    """/etc/sudoers.d/soakd-<user>."""
    return Path("/etc/sudoers.d") / f"soakd-{file_stem(spec.user)}"


def newsyslog_path(spec: ServiceSpec) -> Path:
    """/etc/newsyslog.d/soakd.conf for the system job, soakd-<user>.conf for an agent."""
    name = "soakd.conf" if spec.system else f"soakd-{file_stem(spec.user)}.conf"
    return Path("/etc/newsyslog.d") / name


def launchd_job(spec: ServiceSpec) -> dict[str, Any]:
    """The launchd job as a plist dictionary (launchd/README.md: "Why each launchd key")."""
    environment = {"PYTHONUNBUFFERED": "1"}
    if spec.pythonpath:
        environment["PYTHONPATH"] = spec.pythonpath
    open_files = {"NumberOfFiles": OPEN_FILES_LIMIT}
    return {
        "Label": spec.label,
        "ProgramArguments": supervisor_command(spec),
        "WorkingDirectory": str(spec.state_dir),
        "EnvironmentVariables": environment,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ProcessType": "Interactive",
        "ExitTimeOut": EXIT_TIMEOUT_S,
        "ThrottleInterval": THROTTLE_INTERVAL_S,
        "SoftResourceLimits": open_files,
        "HardResourceLimits": dict(open_files),
        "StandardOutPath": str(spec.log_dir / "soakd.log"),
        "StandardErrorPath": str(spec.log_dir / "soakd.err.log"),
    }


def launchd_plan(spec: ServiceSpec) -> Plan:
    """The plist, the newsyslog rule and (for an agent) the sudoers rule, staged for root."""
    job = launchd_job(spec)
    if spec.system:
        plist_path = Path("/Library/LaunchDaemons") / f"{spec.label}.plist"
    else:
        plist_path = Path.home() / "Library" / "LaunchAgents" / f"{spec.label}.plist"
    plist = RenderedFile(plist_path, plistlib.dumps(job, sort_keys=False).decode("utf-8"), 0o644)

    newsyslog_final = newsyslog_path(spec)
    newsyslog = render("newsyslog.conf.j2", {
        "install_path": str(newsyslog_final),
        "stdout_path": newsyslog_field(Path(job["StandardOutPath"])),
        "stderr_path": newsyslog_field(Path(job["StandardErrorPath"])),
        "owner": f"{spec.user}:{spec.group}",
        "pid_file": newsyslog_field(spec.log_dir / "supervisor.pid"),
        "signal": int(REOPEN_SIGNAL),
    })
    directories = (spec.state_dir, spec.log_dir)
    if spec.system:
        # As root nothing needs escalating, and the daemon needs no sudoers rule.
        return Plan(spec, (plist, RenderedFile(newsyslog_final, newsyslog, 0o644)),
                    directories=directories)

    sudoers_final = sudoers_path(spec)
    powermetrics = powermetrics_argv()
    sudoers = render("soakd.sudoers.j2", {
        "user": sudoers_user(spec.user),
        "install_path": str(sudoers_final),
        "sudoers_command": sudoers_command(powermetrics),
        "command_line": shlex.join(powermetrics),
    })
    staging = spec.state_dir / "service"
    root_files = (
        (RenderedFile(staging / sudoers_final.name, sudoers, 0o440),
         RenderedFile(sudoers_final, sudoers, 0o440)),
        (RenderedFile(staging / newsyslog_final.name, newsyslog, 0o644),
         RenderedFile(newsyslog_final, newsyslog, 0o644)),
    )
    return Plan(spec, (plist,), root_files=root_files, directories=(*directories, staging))


# --- systemd ------------------------------------------------------------------------------------


def systemd_unit_path(spec: ServiceSpec) -> Path:
    """/etc/systemd/system/soakd.service, or the user's $XDG_CONFIG_HOME/systemd/user/."""
    if spec.system:
        return Path("/etc/systemd/system") / UNIT_NAME
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "systemd" / "user" / UNIT_NAME


def systemd_plan(spec: ServiceSpec) -> Plan:
    """The unit; logs go to the journal (journalctl [--user] -u soakd), so nothing else."""
    template = "systemd/soakd.service.j2" if spec.system else "systemd/soakd-user.service.j2"
    unit = render(template, {
        "run_command": spec.run_command,
        "state_dir": spec.state_dir,
        "pythonpath": spec.pythonpath,
        "exit_timeout_s": EXIT_TIMEOUT_S,
        "throttle_interval_s": THROTTLE_INTERVAL_S,
        "ex_config": EX_CONFIG,
        "open_files": OPEN_FILES_LIMIT,
    })
    notes: tuple[str, ...] = ()
    if not spec.system:
        notes = (f"to keep it running while {spec.user} is logged out: "
                 f"sudo loginctl enable-linger {shlex.quote(spec.user)}",)
    return Plan(spec, (RenderedFile(systemd_unit_path(spec), unit, 0o644),),
                directories=(spec.state_dir,), notes=notes)


def make_plan(spec: ServiceSpec) -> Plan:
    """The files for the spec's service manager (see launchd_plan and systemd_plan)."""
    if spec.manager == "launchd":
        return launchd_plan(spec)
    return systemd_plan(spec)
