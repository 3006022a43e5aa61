"""The files a service install writes: launchd plists (parsed with plistlib), systemd units
(parsed key by key and `systemd-analyze verify`ed), newsyslog and sudoers rules (`visudo -cf`).
launchd itself cannot run here (Linux): see launchd/README.md."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import plistlib
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from install_helpers import (
    DAEMON_STOP_BUDGET_S,
    PYTHON,
    agent_plan,
    load_plist,
    split_supervisor,
    systemd_plan,
)

from daemon import paths
from daemon.install import render
from daemon.install import spec as install_spec
from daemon.sources.powermetrics import PowermetricsSource, powermetrics_command
from daemon.supervisor import REOPEN_SIGNAL

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
    assert supervisor[1:3] == ["-m", "daemon.supervisor"]
    assert command[:4] == [PYTHON, "-m", "daemon.cli", "run"]
    assert document["KeepAlive"] == {"SuccessfulExit": False}
    assert document["RunAtLoad"] is True
    assert document["ProcessType"] == "Interactive"
    assert document["ExitTimeOut"] == install_spec.EXIT_TIMEOUT_S > DAEMON_STOP_BUDGET_S
    assert document["ThrottleInterval"] == install_spec.THROTTLE_INTERVAL_S
    assert document["EnvironmentVariables"]["PYTHONUNBUFFERED"] == "1"
    # bounded open files, soft and hard, like systemd's LimitNOFILE (the metrics server bounds
    # its connections well below this)
    for limits in ("SoftResourceLimits", "HardResourceLimits"):
        assert document[limits] == {"NumberOfFiles": install_spec.OPEN_FILES_LIMIT}
    assert 256 < install_spec.OPEN_FILES_LIMIT <= 10240  # above launchd's 256 default
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
    plan = render.make_plan(install_spec.resolve_spec("launchd", system=True, for_this_host=False))
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
    spec = install_spec.resolve_spec("launchd", system=True, for_this_host=False)
    assert spec.state_dir == Path("/Library/Application Support/soakd")
    assert spec.log_dir == Path("/Library/Logs/soakd")
    # the process is still a user: its own defaults are the user's
    assert not paths.is_root() and paths.default_state_dir().is_relative_to(user_env)
    assert paths.default_state_dir(root=True) == spec.state_dir


@pytest.mark.usefixtures("on_mac")
def test_plist_values_are_escaped(user_env: Path, tmp_path: Path) -> None:
    odd = tmp_path / "state <&> 'x' \"y\""
    config = tmp_path / "a&b.toml"
    config.write_text("")
    spec = install_spec.resolve_spec("launchd", system=False, state_dir=odd, config=config,
                           for_this_host=False)
    document = load_plist(render.make_plan(spec))
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
    assert install_spec.service_pythonpath(init, ["", "/usr/lib/python3"], {}, src) == src
    assert install_spec.service_pythonpath(init, [src], {"PYTHONPATH": src}, "/") == src
    assert install_spec.service_pythonpath(init, [src], {}, "/") is None  # e.g. added by a .pth file
    assert install_spec.service_pythonpath(init, ["/elsewhere"], {}, "/") is None  # an import hook


def test_pythonpath_reaches_the_plist_and_the_unit(user_env: Path) -> None:
    spec = install_spec.resolve_spec("launchd", system=False, for_this_host=False)
    spec = dataclasses.replace(spec, pythonpath="/src/soakd")
    assert load_plist(render.make_plan(spec))["EnvironmentVariables"]["PYTHONPATH"] == "/src/soakd"
    unit = render.make_plan(dataclasses.replace(spec, manager="systemd"))
    assert "Environment=PYTHONPATH=/src/soakd\n" in unit.service_file.content


def test_render_rejects_missing_and_unused_values() -> None:
    values = {"install_path": "/etc/sudoers.d/soakd-alice", "user": "alice",
              "sudoers_command": "/usr/bin/powermetrics", "command_line": "/usr/bin/powermetrics"}
    assert "alice ALL = (root) NOPASSWD: /usr/bin/powermetrics\n" in render.render("soakd.sudoers.j2", values)
    with pytest.raises(install_spec.ServiceError, match="'user' is undefined"):
        render.render("soakd.sudoers.j2", {k: v for k, v in values.items() if k != "user"})
    with pytest.raises(install_spec.ServiceError, match="no placeholder for extra"):
        render.render("soakd.sudoers.j2", {**values, "extra": "1"})
    with pytest.raises(install_spec.ServiceError, match="not found"):
        render.render("nope.j2", values)


def test_no_blank_line_where_an_optional_setting_is_left_out(user_env: Path) -> None:
    spec = install_spec.resolve_spec("systemd", system=False, for_this_host=False)
    content = render.make_plan(dataclasses.replace(spec, pythonpath=None)).service_file.content
    assert "PYTHONPATH" not in content
    assert "Environment=PYTHONUNBUFFERED=1\n# SIGTERM" in content


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
        assert int(signum) == signal.SIGWINCH == REOPEN_SIGNAL


@pytest.mark.usefixtures("on_mac")
def test_newsyslog_refuses_a_log_path_with_spaces(user_env: Path, tmp_path: Path) -> None:
    spec = install_spec.resolve_spec("launchd", system=False, log_dir=tmp_path / "my logs",
                           for_this_host=False)
    with pytest.raises(install_spec.ServiceError, match="newsyslog"):
        render.make_plan(spec)


def sudoers_text(plan: render.Plan) -> str:
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
    monkeypatch.setattr(install_spec, "current_user", lambda: ("john.doe", "staff", 501))
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
    assert int(one["TimeoutStopSec"]) == install_spec.EXIT_TIMEOUT_S > DAEMON_STOP_BUDGET_S
    assert one["Restart"] == "on-failure"
    assert "78" in one["RestartPreventExitStatus"].split()
    assert int(one["RestartSec"]) == install_spec.THROTTLE_INTERVAL_S
    assert "PYTHONUNBUFFERED=1" in service["Environment"]
    assert one["Nice"] == "0"
    assert one["LimitNOFILE"] == str(install_spec.OPEN_FILES_LIMIT)
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
    unit = tmp_path / "units" / install_spec.UNIT_NAME  # verify wants the real unit name
    unit.parent.mkdir()
    unit.write_text(systemd_plan(system, state_dir=state).service_file.content)
    runtime = tmp_path / "runtime"  # a --user manager needs a runtime dir, even offline
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"}
    argv = [analyze, *(() if system else ("--user",)), "verify", str(unit)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                          timeout=60)
    complaints = [line for line in (done.stdout + done.stderr).splitlines()
                  if install_spec.UNIT_NAME in line or "soakd" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemd_exec_start_quotes_odd_paths(user_env: Path, tmp_path: Path) -> None:
    config = tmp_path / "my config%1.toml"
    config.write_text("")
    content = systemd_plan(False, config=config).service_file.content
    assert f'--config "{tmp_path}/my config%%1.toml"' in content
    unit = parse_unit(systemd_plan(False, state_dir=tmp_path / "with space%").service_file.content)
    assert unit["Service"]["WorkingDirectory"] == [f"{tmp_path}/with space%%"]
    with pytest.raises(install_spec.ServiceError, match="control character"):
        systemd_plan(False, state_dir=tmp_path / "new\nline")




def test_the_examples_in_launchd_are_what_the_code_renders() -> None:
    script = Path(__file__).resolve().parents[3] / "launchd" / "render_examples.py"
    loaded = importlib.util.spec_from_file_location("soakd_launchd_examples", script)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    rendered = module.render_all()
    assert len(rendered) == 7 and "macos-agent/com.soakd.agent.plist" in rendered
    assert module.main(["--check"]) == 0, "stale: run python launchd/render_examples.py"
    plist = plistlib.loads((script.parent / "examples/macos-daemon/com.soakd.daemon.plist").read_bytes())
    assert plist["Label"] == "com.soakd.daemon"
