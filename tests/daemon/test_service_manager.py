"""launchd/systemd integration: rendered files, install/uninstall into a temp prefix with a
recording runner (nothing on this machine is touched), and the launchd supervisor with real
processes. launchd itself cannot run here (Linux): see launchd/README.md."""

from __future__ import annotations

import argparse
import dataclasses
import os
import plistlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from daemon import cli, paths
from daemon import service_manager as sm
from daemon.commands import service as service_command
from daemon.sources.powermetrics import PowermetricsSource, powermetrics_command

PYTHON = sys.executable
DAEMON_STOP_BUDGET_S = 10  # `soakd run` exits within 10 s of SIGTERM (DESIGN.md)


class Recorder:
    """A Runner that records each command and answers from a table (default: success)."""

    def __init__(self, answers: dict[tuple[str, ...], list[int]] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.answers = answers or {}

    def __call__(self, argv: Sequence[str]) -> sm.CommandResult:
        self.calls.append(list(argv))
        for prefix, codes in self.answers.items():
            if tuple(argv[: len(prefix)]) == prefix and codes:
                code = codes.pop(0) if len(codes) > 1 else codes[0]
                return sm.CommandResult(code, "", f"exit {code}" if code else "")
        return sm.CommandResult(0, "", "")


@pytest.fixture
def user_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An ordinary user (uid 501 'alice') with a temporary home, whatever runs the tests."""
    home = tmp_path / "home" / "alice"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "SOAKD_CONFIG", "PYTHONPATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 501)
    monkeypatch.setattr(sm, "_current_user", lambda: ("alice", "staff", 501))
    return home


@pytest.fixture
def root_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


@pytest.fixture
def on_mac(monkeypatch: pytest.MonkeyPatch) -> None:
    # daemon.paths reads sys.platform at call time: this gives the macOS layout.
    monkeypatch.setattr(sys, "platform", "darwin")


def agent_plan() -> sm.Plan:
    return sm.make_plan(sm.resolve_spec("launchd", system=False, for_this_host=False))


def load_plist(plan: sm.Plan) -> dict[str, Any]:
    document = plistlib.loads(plan.service_file.content.encode("utf-8"))
    assert isinstance(document, dict)
    return document


def split_supervisor(arguments: list[str]) -> tuple[list[str], list[str]]:
    separator = arguments.index("--")
    return arguments[:separator], arguments[separator + 1:]


# --------------------------------------------------------------------------------------------
# launchd plists


def check_launchd_keys(document: dict[str, Any], label: str) -> None:
    assert document["Label"] == label
    arguments = document["ProgramArguments"]
    assert all(isinstance(item, str) for item in arguments)
    interpreter = Path(arguments[0])
    assert interpreter.is_absolute() and interpreter.exists() and os.access(interpreter, os.X_OK)
    assert arguments[0] == PYTHON
    supervisor, command = split_supervisor(arguments)
    assert supervisor[1:4] == ["-m", "daemon.service_manager", "supervise"]
    assert command[:4] == [PYTHON, "-m", "daemon.cli", "run"]
    assert document["KeepAlive"] == {"SuccessfulExit": False}
    assert document["RunAtLoad"] is True
    assert document["ProcessType"] == "Interactive"
    assert document["ExitTimeOut"] == sm.EXIT_TIMEOUT_S > DAEMON_STOP_BUDGET_S
    assert document["ThrottleInterval"] == sm.THROTTLE_INTERVAL_S
    assert document["EnvironmentVariables"]["PYTHONUNBUFFERED"] == "1"
    for key in ("StandardOutPath", "StandardErrorPath", "WorkingDirectory"):
        assert Path(document[key]).is_absolute()
    # The supervisor reopens exactly the files launchd opened.
    assert supervisor[supervisor.index("--stdout") + 1] == document["StandardOutPath"]
    assert supervisor[supervisor.index("--stderr") + 1] == document["StandardErrorPath"]


@pytest.mark.usefixtures("on_mac")
def test_agent_plist_has_the_keys_launchd_needs(user_env: Path) -> None:
    plan = agent_plan()
    document = load_plist(plan)
    check_launchd_keys(document, "com.soakd.agent")
    assert plan.service_file.path == user_env / "Library/LaunchAgents/com.soakd.agent.plist"
    assert plan.service_file.mode == 0o644
    logs = user_env / "Library/Logs/soakd"
    assert document["StandardOutPath"] == str(logs / "soakd.log")
    assert document["StandardErrorPath"] == str(logs / "soakd.err.log")
    state = user_env / "Library/Application Support/soakd"
    assert document["WorkingDirectory"] == str(state)
    _, command = split_supervisor(document["ProgramArguments"])
    assert command[command.index("--state-dir") + 1] == str(state)
    assert "--config" not in command  # no config file: the daemon runs on its defaults
    supervisor, _ = split_supervisor(document["ProgramArguments"])
    assert supervisor[supervisor.index("--hint") + 1] == (
        "launchctl kickstart -k gui/501/com.soakd.agent")


@pytest.mark.usefixtures("on_mac", "root_env")
def test_daemon_plist_uses_the_system_locations() -> None:
    plan = sm.make_plan(sm.resolve_spec("launchd", system=True, for_this_host=False))
    document = load_plist(plan)
    check_launchd_keys(document, "com.soakd.daemon")
    assert plan.service_file.path == Path("/Library/LaunchDaemons/com.soakd.daemon.plist")
    assert document["StandardOutPath"] == "/Library/Logs/soakd/soakd.log"
    assert document["WorkingDirectory"] == "/Library/Application Support/soakd"
    assert "UserName" not in document  # root: powermetrics needs no sudo
    assert plan.root_files == ()  # nothing to escalate, no sudoers rule
    assert [f.path for f in plan.files[1:]] == [Path("/etc/newsyslog.d/soakd.conf")]


@pytest.mark.usefixtures("on_mac")
def test_system_paths_rendered_by_a_user_without_changing_daemon_paths(user_env: Path) -> None:
    original = paths._is_root
    spec = sm.resolve_spec("launchd", system=True, for_this_host=False)
    assert spec.state_dir == Path("/Library/Application Support/soakd")
    assert paths._is_root is original and paths.default_state_dir().is_relative_to(user_env)


@pytest.mark.usefixtures("on_mac")
def test_plist_values_are_escaped(user_env: Path, tmp_path: Path) -> None:
    odd = tmp_path / "state <&> 'x' \"y\""
    config = tmp_path / "a&b.toml"
    config.write_text("")
    spec = sm.resolve_spec("launchd", system=False, state_dir=odd, config=config,
                           for_this_host=False)
    document = load_plist(sm.make_plan(spec))
    assert document["WorkingDirectory"] == str(odd)
    _, command = split_supervisor(document["ProgramArguments"])
    assert command[command.index("--config") + 1] == str(config)


@pytest.mark.usefixtures("on_mac")
def test_existing_default_config_is_pinned(user_env: Path) -> None:
    config = user_env / "Library/Application Support/soakd/soakd.toml"
    config.parent.mkdir(parents=True)
    config.write_text("")
    _, command = split_supervisor(load_plist(agent_plan())["ProgramArguments"])
    assert command[command.index("--config") + 1] == str(config)


def test_pythonpath_only_for_a_checkout_found_through_the_cwd(tmp_path: Path) -> None:
    package = tmp_path / "src" / "daemon"
    package.mkdir(parents=True)
    init = str(package / "__init__.py")
    src = str(tmp_path / "src")
    assert sm.service_pythonpath(init, ["", "/usr/lib/python3"], {}, src) == src
    assert sm.service_pythonpath(init, [src], {"PYTHONPATH": src}, "/") == src
    assert sm.service_pythonpath(init, [src], {}, "/") is None  # e.g. added by a .pth file
    assert sm.service_pythonpath(init, ["/elsewhere"], {}, "/") is None  # an import hook


def test_pythonpath_reaches_the_plist_and_the_unit(user_env: Path) -> None:
    spec = sm.resolve_spec("launchd", system=False, for_this_host=False)
    spec = dataclasses.replace(spec, pythonpath="/src/soakd")
    assert load_plist(sm.make_plan(spec))["EnvironmentVariables"]["PYTHONPATH"] == "/src/soakd"
    unit = sm.make_plan(dataclasses.replace(spec, manager="systemd"))
    assert "Environment=PYTHONPATH=/src/soakd\n" in unit.service_file.content


def test_render_rejects_missing_and_unused_values() -> None:
    with pytest.raises(sm.ServiceError, match="@B@ has no value"):
        sm.render("@A@ @B@", {"A": "1"})
    with pytest.raises(sm.ServiceError, match="no placeholder for C"):
        sm.render("@A@", {"A": "1", "C": "2"})
    assert sm.render("x\n  @E@\ny\n", {"E": ""}) == "x\ny\n"


# --------------------------------------------------------------------------------------------
# newsyslog and sudoers


def config_lines(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and
            not line.lstrip().startswith("#")]


@pytest.mark.usefixtures("on_mac")
def test_newsyslog_lines_have_the_right_fields(user_env: Path) -> None:
    plan = agent_plan()
    document = load_plist(plan)
    (_, _), (staged, final) = plan.root_files
    assert final.path == Path("/etc/newsyslog.d/soakd-alice.conf")
    lines = config_lines(staged.content)
    assert [line[0] for line in lines] == [document["StandardOutPath"],
                                           document["StandardErrorPath"]]
    supervisor, _ = split_supervisor(document["ProgramArguments"])
    pid_file = supervisor[supervisor.index("--pid-file") + 1]
    for line in lines:
        # logfile owner:group mode count size(KiB) when flags pid_file signal
        assert len(line) == 9
        _, owner, mode, count, size, when, flags, pid, signum = line
        assert owner == "alice:staff"  # else the new file is root's and the agent cannot write
        assert mode == "640" and int(count) >= 1 and int(size) > 0 and when == "*"
        assert set(flags) <= set("BCDGJNUXZ") and "N" not in flags  # it must signal
        assert pid == pid_file and Path(pid).is_absolute()
        assert int(signum) == signal.SIGWINCH == sm.REOPEN_SIGNAL


@pytest.mark.usefixtures("on_mac")
def test_newsyslog_refuses_a_log_path_with_spaces(user_env: Path, tmp_path: Path) -> None:
    spec = sm.resolve_spec("launchd", system=False, log_dir=tmp_path / "my logs",
                           for_this_host=False)
    with pytest.raises(sm.ServiceError, match="newsyslog"):
        sm.make_plan(spec)


def sudoers_text(plan: sm.Plan) -> str:
    (staged, final), _ = plan.root_files
    assert final.path.parent == Path("/etc/sudoers.d") and "." not in final.path.name
    assert final.mode == staged.mode == 0o440
    return staged.content


@pytest.mark.usefixtures("on_mac")
def test_sudoers_allows_only_powermetrics_with_fixed_arguments(user_env: Path) -> None:
    rules = config_lines(sudoers_text(agent_plan()))
    assert len(rules) == 1
    rule = rules[0]
    assert rule[:5] == ["alice", "ALL", "=", "(root)", "NOPASSWD:"]
    # Unescaped, a ',' would start a second command: each must be written '\,'.
    assert re.search(r"(?<!\\),", " ".join(rule)) is None
    command = [re.sub(r"\\(.)", r"\1", word) for word in rule[5:]]
    # Exactly what the powermetrics source runs under `sudo -n` (with its defaults).
    source = PowermetricsSource()
    assert ["sudo", "-n", *command] == powermetrics_command(
        source.interval_ms, source.samplers, "/usr/bin/powermetrics", sudo=True)
    assert command[0] == "/usr/bin/powermetrics" and "-f" in command and "plist" in command
    assert not any(word in ("ALL", "*", "-o", "-u", "--output-file") for word in command)


@pytest.mark.usefixtures("on_mac")
def test_sudoers_file_name_has_no_dot(user_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sm, "_current_user", lambda: ("john.doe", "staff", 501))
    (_, final), (_, newsyslog) = agent_plan().root_files
    assert final.path.name == "soakd-john_doe"  # sudo skips drop-ins whose name has a dot
    assert newsyslog.path.name == "soakd-john_doe.conf"


@pytest.mark.usefixtures("on_mac")
def test_visudo_accepts_the_sudoers_drop_in(user_env: Path, tmp_path: Path) -> None:
    visudo = shutil.which("visudo")
    if visudo is None:
        pytest.skip("visudo is not installed here (Debian package 'sudo'); the rule's shape "
                    "is still checked by test_sudoers_allows_only_powermetrics_...")
    drop_in = tmp_path / "soakd-alice"
    drop_in.write_text(sudoers_text(agent_plan()))
    drop_in.chmod(0o440)
    done = subprocess.run([visudo, "-cf", str(drop_in)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken"
    broken.write_text("alice ALL = (root NOPASSWD: /usr/bin/powermetrics\n")
    assert subprocess.run([visudo, "-cf", str(broken)], capture_output=True,
                          check=False).returncode != 0  # visudo really checks


# --------------------------------------------------------------------------------------------
# install / uninstall / status (launchd) into a prefix


def files_under(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*") if path.is_file()}


@pytest.mark.usefixtures("on_mac")
def test_launchd_install_into_a_prefix(user_env: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    plan = agent_plan()
    runner = Recorder({("launchctl", "print"): [113]})  # not loaded yet
    lines: list[str] = []
    sm.install(plan, runner=runner, prefix=prefix, say=lines.append, sleep=lambda s: None)

    home = user_env.relative_to("/")
    state = home / "Library/Application Support/soakd"
    assert files_under(prefix) == {
        home / "Library/LaunchAgents/com.soakd.agent.plist",
        state / "service/soakd-alice",
        state / "service/soakd-alice.conf",
    }
    assert (prefix / home / "Library/Logs/soakd").is_dir()  # launchd cannot create it
    plist = prefix / home / "Library/LaunchAgents/com.soakd.agent.plist"
    assert plist.stat().st_mode & 0o777 == 0o644
    assert plistlib.loads(plist.read_bytes())["Label"] == "com.soakd.agent"
    assert (prefix / state / "service/soakd-alice").stat().st_mode & 0o777 == 0o440
    target = "gui/501/com.soakd.agent"
    assert runner.calls == [
        ["launchctl", "print", target],
        ["launchctl", "enable", target],
        # The path launchd will read: the real one, not the prefix.
        ["launchctl", "bootstrap", "gui/501", str(plan.service_file.path)],
    ]
    text = "\n".join(lines)
    assert "sudo visudo -cf" in text and "/etc/sudoers.d/soakd-alice" in text
    assert "/etc/newsyslog.d/soakd-alice.conf" in text


@pytest.mark.usefixtures("on_mac")
def test_launchd_reinstall_boots_out_first_and_retries_bootstrap(user_env: Path,
                                                                 tmp_path: Path) -> None:
    plan = agent_plan()
    runner = Recorder({("launchctl", "print"): [0], ("launchctl", "bootstrap"): [5, 0]})
    sleeps: list[float] = []
    sm.install(plan, runner=runner, prefix=tmp_path, say=lambda line: None, sleep=sleeps.append)
    verbs = [call[1] for call in runner.calls]
    assert verbs == ["print", "bootout", "enable", "bootstrap", "bootstrap"]
    assert len(sleeps) == 1


@pytest.mark.usefixtures("on_mac")
def test_launchd_bootstrap_failure_is_one_clear_error(user_env: Path, tmp_path: Path) -> None:
    runner = Recorder({("launchctl", "print"): [113], ("launchctl", "bootstrap"): [5]})
    with pytest.raises(sm.ServiceError, match=r"launchctl bootstrap gui/501 .* exit 5"):
        sm.install(agent_plan(), runner=runner, prefix=tmp_path, say=lambda line: None,
                   sleep=lambda s: None)


@pytest.mark.usefixtures("on_mac")
def test_dry_run_writes_and_runs_nothing(user_env: Path, tmp_path: Path) -> None:
    runner = Recorder()
    lines: list[str] = []
    sm.install(agent_plan(), runner=runner, prefix=tmp_path / "p", dry_run=True,
               say=lines.append)
    assert runner.calls == [] and not (tmp_path / "p").exists()
    text = "\n".join(lines)
    assert "<key>ProcessType</key>" in text
    assert "would run: launchctl bootstrap gui/501" in text


@pytest.mark.usefixtures("on_mac")
def test_launchd_uninstall_removes_what_install_wrote(user_env: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    plan = agent_plan()
    sm.install(plan, runner=Recorder(), prefix=prefix, say=lambda line: None,
               sleep=lambda s: None)
    # As if the user had run the printed sudo commands:
    for _, final in plan.root_files:
        sm._write(sm.under(prefix, final.path), final.content, final.mode)
    state_files = files_under(prefix / plan.spec.state_dir.relative_to("/"))

    runner = Recorder({("launchctl", "bootout"): [113]})  # not loaded: fine
    lines: list[str] = []
    sm.uninstall(plan, runner=runner, prefix=prefix, say=lines.append)
    assert runner.calls == [["launchctl", "bootout", "gui/501/com.soakd.agent"]]
    assert files_under(prefix) == {
        Path("etc/sudoers.d/soakd-alice"), Path("etc/newsyslog.d/soakd-alice.conf")}
    assert state_files  # they were there
    assert any("sudo rm -f /etc/sudoers.d/soakd-alice /etc/newsyslog.d/soakd-alice.conf"
               in line for line in lines)


@pytest.mark.usefixtures("on_mac")
def test_launchd_status(user_env: Path, tmp_path: Path) -> None:
    plan = agent_plan()
    lines: list[str] = []
    loaded = Recorder({("launchctl", "print"): [0]})
    assert sm.status(plan, runner=loaded, prefix=tmp_path, say=lines.append) == 0
    assert loaded.calls == [["launchctl", "print", "gui/501/com.soakd.agent"]]
    assert sm.status(plan, runner=Recorder({("launchctl", "print"): [113]}), prefix=tmp_path,
                     say=lines.append) == 3
    assert "missing: " in lines[0] and lines[-1] == "gui/501/com.soakd.agent is not loaded"


# --------------------------------------------------------------------------------------------
# systemd


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax (INI-like; a key may repeat, so not configparser's strict dict)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, separator, value = line.partition("=")
        assert separator, f"not key=value: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def systemd_plan(system: bool, **kwargs: Any) -> sm.Plan:
    return sm.make_plan(sm.resolve_spec("systemd", system=system, for_this_host=False, **kwargs))


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_systemd_unit_has_the_settings(system: bool, request: pytest.FixtureRequest) -> None:
    request.getfixturevalue("root_env" if system else "user_env")
    unit = parse_unit(systemd_plan(system).service_file.content)
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert one["Type"] == "simple"
    exec_start = one["ExecStart"].split()
    assert exec_start[:5] == [PYTHON, "-m", "daemon.cli", "run", "--state-dir"]
    assert Path(exec_start[0]).exists()
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["KillSignal"] == "SIGTERM" and one["KillMode"] == "mixed"
    assert int(one["TimeoutStopSec"]) == sm.EXIT_TIMEOUT_S > DAEMON_STOP_BUDGET_S
    assert one["Restart"] == "on-failure"
    assert "78" in one["RestartPreventExitStatus"].split()
    assert int(one["RestartSec"]) == sm.THROTTLE_INTERVAL_S
    assert "PYTHONUNBUFFERED=1" in service["Environment"]
    assert one["Nice"] == "0"
    for throttle in ("CPUQuota", "CPUWeight", "MemoryHigh", "AllowedCPUs", "IOWeight"):
        assert throttle not in service
    wanted = "multi-user.target" if system else "default.target"
    assert unit["Install"]["WantedBy"] == [wanted]
    assert one["WorkingDirectory"] == exec_start[5]


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_systemd_analyze_verify(system: bool, request: pytest.FixtureRequest,
                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian package 'systemd'); the "
                    "unit's keys are still checked by test_systemd_unit_has_the_settings")
    request.getfixturevalue("root_env" if system else "user_env")
    state = tmp_path / "state dir%"  # exercises the quoting of ExecStart and the % escape
    state.mkdir()
    unit = tmp_path / "units" / sm.UNIT_NAME  # verify wants the real unit name
    unit.parent.mkdir()
    unit.write_text(systemd_plan(system, state_dir=state).service_file.content)
    runtime = tmp_path / "runtime"  # a --user manager needs a runtime dir, even offline
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"}
    argv = [analyze, *(() if system else ("--user",)), "verify", str(unit)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                          timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if sm.UNIT_NAME in line or "soakd" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemd_exec_start_quotes_odd_paths(user_env: Path, tmp_path: Path) -> None:
    config = tmp_path / "my config%1.toml"
    config.write_text("")
    content = systemd_plan(False, config=config).service_file.content
    assert f'--config "{tmp_path}/my config%%1.toml"' in content
    unit = parse_unit(systemd_plan(False, state_dir=tmp_path / "with space%").service_file.content)
    assert unit["Service"]["WorkingDirectory"] == [f"{tmp_path}/with space%%"]
    with pytest.raises(sm.ServiceError, match="control character"):
        systemd_plan(False, state_dir=tmp_path / "new\nline")


def test_systemd_install_and_uninstall_into_a_prefix(user_env: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    plan = systemd_plan(False)
    unit_path = user_env / ".config/systemd/user/soakd.service"
    assert plan.service_file.path == unit_path
    runner = Recorder({("systemctl", "--user", "is-active"): [3]})
    lines: list[str] = []
    sm.install(plan, runner=runner, prefix=prefix, say=lines.append)
    assert files_under(prefix) == {unit_path.relative_to("/")}
    assert runner.calls == [
        ["systemctl", "--user", "is-active", "--quiet", "soakd.service"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "soakd.service"],
    ]
    assert any("loginctl enable-linger alice" in line for line in lines)

    running = Recorder()  # is-active says 0: the old definition runs, so restart it
    sm.install(plan, runner=running, prefix=prefix, say=lambda line: None)
    assert running.calls[-1] == ["systemctl", "--user", "restart", "soakd.service"]

    runner = Recorder()
    sm.uninstall(plan, runner=runner, prefix=prefix, say=lambda line: None)
    assert files_under(prefix) == set()
    assert runner.calls == [
        ["systemctl", "--user", "disable", "--now", "soakd.service"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "reset-failed", "soakd.service"],
    ]


@pytest.mark.usefixtures("root_env")
def test_systemd_system_commands_have_no_user_flag(tmp_path: Path) -> None:
    plan = systemd_plan(True)
    assert plan.service_file.path == Path("/etc/systemd/system/soakd.service")
    runner = Recorder({("systemctl", "is-active"): [3]})
    sm.install(plan, runner=runner, prefix=tmp_path, say=lambda line: None)
    assert [call[:2] for call in runner.calls] == [
        ["systemctl", "is-active"], ["systemctl", "daemon-reload"], ["systemctl", "enable"]]
    assert sm.status(plan, runner=Recorder({("systemctl", "status"): [3]}), prefix=tmp_path,
                     say=lambda line: None) == 3


# --------------------------------------------------------------------------------------------
# platform detection and the CLI


def test_detect_manager(tmp_path: Path) -> None:
    assert sm.detect_manager("darwin", tmp_path) == "launchd"
    with pytest.raises(sm.ServiceError, match="no supported service manager"):
        sm.detect_manager("linux", tmp_path)
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert sm.detect_manager("linux", tmp_path) == "systemd"
    with pytest.raises(sm.ServiceError, match="no supported service manager"):
        sm.detect_manager("win32", tmp_path)


def test_root_must_ask_for_the_system_service(root_env: None) -> None:
    with pytest.raises(sm.ServiceError, match="--system"):
        sm.resolve_spec("systemd", system=False)


def test_a_user_cannot_install_the_system_service(user_env: Path) -> None:
    with pytest.raises(sm.ServiceError, match="needs root"):
        sm.resolve_spec("systemd", system=True)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The service sub-command alone, through daemon.cli's parser and error handling (the
    other sub-commands are other people's and may import torch)."""
    parser = cli.Parser(prog="soakd")
    subparsers = parser.add_subparsers(dest="command", parser_class=cli.Parser)
    service_command.register(subparsers)
    args: argparse.Namespace = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        code = func(args)
    except cli.UsageError as exc:
        print(f"soakd {args.command}: error: {exc}", file=sys.stderr)
        code = cli.EX_USAGE
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_registers_the_service_command() -> None:
    assert "daemon.commands.service" in cli.COMMAND_MODULES


def test_cli_install_status_uninstall_with_prefix(user_env: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "prefix"
    base = ["--manager", "systemd", "--prefix", str(prefix)]
    unit = prefix / user_env.relative_to("/") / ".config/systemd/user/soakd.service"
    code, out, _ = run_cli(["service", "install", *base], capsys)
    assert code == 0 and unit.is_file()
    assert "not run (files only): systemctl --user enable --now soakd.service" in out
    assert run_cli(["service", "status", *base], capsys)[0] == 0
    assert run_cli(["service", "uninstall", *base], capsys)[0] == 0
    assert not unit.exists()
    assert run_cli(["service", "status", *base], capsys)[0] == 3


def test_cli_errors_are_one_line(user_env: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    code, _, err = run_cli(["service", "install", "--config", str(missing), "--dry-run",
                            "--manager", "systemd"], capsys)
    assert code == 2 and err == f"soakd service: error: --config {missing}: no such file\n"
    if sys.platform.startswith("linux") and not Path("/run/systemd/system").is_dir():
        code, _, err = run_cli(["service", "install", "--manager", "systemd"], capsys)
        assert code == 1 and err.count("\n") == 1 and "not this host's" in err
        code, _, err = run_cli(["service", "status"], capsys)
        assert code == 1 and "no supported service manager" in err


# --------------------------------------------------------------------------------------------
# The launchd supervisor, with real processes

FAKE_DAEMON = r"""
import os, signal, sys, time
def say(text):
    print(text, flush=True)
signal.signal(signal.SIGUSR1, lambda s, f: say("usr1"))
signal.signal(signal.SIGHUP, lambda s, f: say("hup"))
def stop(s, f):
    say("stopping")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
say("ready %d" % os.getpid())
while True:
    time.sleep(0.05)
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def start_supervisor(tmp_path: Path, child: list[str]) -> tuple[subprocess.Popen[bytes], Path,
                                                                  Path, Path]:
    """The supervisor exactly as the rendered plist starts it, with a fake `soakd run`."""
    logs = tmp_path / "logs"
    spec = sm.ServiceSpec(manager="launchd", system=False, python=Path(PYTHON),
                          state_dir=tmp_path, config=None, log_dir=logs, user="alice",
                          group="staff", uid=501)
    supervisor, _ = split_supervisor(sm.supervisor_command(spec))
    logs.mkdir()
    out, err = logs / "soakd.log", logs / "soakd.err.log"
    # launchd opens StandardOutPath/StandardErrorPath with O_APPEND before exec.
    with open(out, "ab") as stdout, open(err, "ab") as stderr:
        process = subprocess.Popen([*supervisor, "--", *child], stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL,
                                   cwd=Path(sm.__file__).resolve().parents[1])
    return process, out, err, logs / "supervisor.pid"


@pytest.mark.timeout(60)
def test_supervisor_turns_exit_78_into_0(tmp_path: Path) -> None:
    child = [PYTHON, "-c", "import sys; print('config: bad key', file=sys.stderr); sys.exit(78)"]
    process, _, err, pid_file = start_supervisor(tmp_path, child)
    assert process.wait(timeout=30) == 0  # launchd: SuccessfulExit, so no restart loop
    lines = read(err).splitlines()
    assert lines[0] == "config: bad key"  # the daemon's own line comes first
    assert '"exit_code": 78' in lines[1] and "not restarting" in lines[1]
    assert "launchctl kickstart -k gui/501/com.soakd.agent" in lines[1]
    assert not pid_file.exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("code", "expected"), [(0, 0), (1, 1), (3, 3)])
def test_supervisor_passes_other_exits_through(tmp_path: Path, code: int, expected: int) -> None:
    process, *_ = start_supervisor(tmp_path, [PYTHON, "-c", f"raise SystemExit({code})"])
    assert process.wait(timeout=30) == expected


@pytest.mark.timeout(60)
def test_supervisor_forwards_signals_and_reopens_rotated_logs(tmp_path: Path) -> None:
    process, out, err, pid_file = start_supervisor(tmp_path, [PYTHON, "-c", FAKE_DAEMON])
    try:
        wait_for(lambda: "ready" in read(out))
        assert pid_file.read_text().strip() == str(process.pid)  # for newsyslog's signal
        # launchctl kill SIGUSR1 / SIGHUP reach the job's main process: the supervisor.
        process.send_signal(signal.SIGUSR1)
        wait_for(lambda: "usr1" in read(out))

        # What newsyslog does: move the file aside, then signal the pid file's process.
        out.rename(out.with_name("soakd.log.0"))
        open(out, "ab").close()  # newsyslog creates the new, empty file
        process.send_signal(sm.REOPEN_SIGNAL)
        time.sleep(0.2)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "hup" in read(out))
        assert "hup" not in read(out.with_name("soakd.log.0"))

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)  # launchctl bootout / kill SIGTERM
        assert process.wait(timeout=sm.EXIT_TIMEOUT_S) == 0
        assert time.monotonic() - started < DAEMON_STOP_BUDGET_S
        assert "stopping" in read(out)
        assert read(err) == ""
        assert not pid_file.exists()
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.timeout(60)
def test_supervisor_reopens_by_itself_when_the_log_was_moved(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    # No signal at all (e.g. a rotation by hand): the inode check catches it.
    target = sm._LogTarget(os.open(tmp_path / "a.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND),
                           tmp_path / "a.log")
    target.write(b"one\n")
    (tmp_path / "a.log").rename(tmp_path / "a.log.0")
    monkeypatch.setattr(sm._LogTarget, "CHECK_EVERY_S", 0.0)
    target.write(b"two\n")
    os.close(target.fd)
    assert (tmp_path / "a.log.0").read_text() == "one\n"
    assert (tmp_path / "a.log").read_text() == "two\n"


@pytest.mark.timeout(60)
def test_supervisor_reports_a_killed_daemon_as_a_failure(tmp_path: Path) -> None:
    process, out, err, _ = start_supervisor(tmp_path, [PYTHON, "-c", FAKE_DAEMON])
    try:
        wait_for(lambda: "ready" in read(out))
        child_pid = int(read(out).split()[1])
        os.kill(child_pid, signal.SIGKILL)  # e.g. jetsam: launchd must restart it
        assert process.wait(timeout=30) == 128 + signal.SIGKILL
        assert "killed by SIGKILL" in read(err)
    finally:
        if process.poll() is None:
            process.kill()


def test_supervisor_cannot_start_the_command(tmp_path: Path) -> None:
    process, _, err, _ = start_supervisor(tmp_path, [str(tmp_path / "no-such-python")])
    assert process.wait(timeout=30) == 127
    assert "cannot start soakd run" in read(err)
