"""Install, remove and inspect the service: write the rendered files and drive launchctl or
systemctl.

Everything that touches the machine goes through two seams so tests never do: every file path
can be moved under a `prefix` (DESTDIR-style), and every command runs through a `Runner`.
launchd/README.md lists the exact command sequences.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from daemon.install.render import Plan
from daemon.install.spec import UNIT_NAME, ServiceError, ServiceSpec


@dataclass(frozen=True)
class CommandResult:
    """What a service-manager command did: its exit status and output."""

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
    """What `uninstall` runs before removing the files: bootout, or disable --now."""
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
        """Say one line."""
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
