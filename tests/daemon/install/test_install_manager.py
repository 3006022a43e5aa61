"""Install, uninstall and status into a temporary prefix with a recording runner (nothing on
this machine is touched), platform detection, and the `soakd service` command."""

from __future__ import annotations

import plistlib
import sys
from pathlib import Path

import pytest
from cli_helpers import run_main
from install_helpers import Recorder, agent_plan, systemd_plan

from daemon import cli
from daemon.install import manager
from daemon.install import spec as install_spec

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
    manager.install(plan, runner=runner, prefix=prefix, say=lines.append, sleep=lambda s: None)

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
    manager.install(plan, runner=runner, prefix=tmp_path, say=lambda line: None, sleep=sleeps.append)
    verbs = [call[1] for call in runner.calls]
    assert verbs == ["print", "bootout", "enable", "bootstrap", "bootstrap"]
    assert len(sleeps) == 1


@pytest.mark.usefixtures("on_mac")
def test_launchd_bootstrap_failure_is_one_clear_error(user_env: Path, tmp_path: Path) -> None:
    runner = Recorder({("launchctl", "print"): [113], ("launchctl", "bootstrap"): [5]})
    with pytest.raises(install_spec.ServiceError, match=r"launchctl bootstrap gui/501 .* exit 5"):
        manager.install(agent_plan(), runner=runner, prefix=tmp_path, say=lambda line: None,
                   sleep=lambda s: None)


@pytest.mark.usefixtures("on_mac")
def test_dry_run_writes_and_runs_nothing(user_env: Path, tmp_path: Path) -> None:
    runner = Recorder()
    lines: list[str] = []
    manager.install(agent_plan(), runner=runner, prefix=tmp_path / "p", dry_run=True,
               say=lines.append)
    assert runner.calls == [] and not (tmp_path / "p").exists()
    text = "\n".join(lines)
    assert "<key>ProcessType</key>" in text
    assert "would run: launchctl bootstrap gui/501" in text


@pytest.mark.usefixtures("on_mac")
def test_launchd_uninstall_removes_what_install_wrote(user_env: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    plan = agent_plan()
    manager.install(plan, runner=Recorder(), prefix=prefix, say=lambda line: None,
               sleep=lambda s: None)
    # As if the user had run the printed sudo commands:
    for _, final in plan.root_files:
        manager._write(manager.under(prefix, final.path), final.content, final.mode)
    state_files = files_under(prefix / plan.spec.state_dir.relative_to("/"))

    runner = Recorder({("launchctl", "bootout"): [113]})  # not loaded: fine
    lines: list[str] = []
    manager.uninstall(plan, runner=runner, prefix=prefix, say=lines.append)
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
    assert manager.status(plan, runner=loaded, prefix=tmp_path, say=lines.append) == 0
    assert loaded.calls == [["launchctl", "print", "gui/501/com.soakd.agent"]]
    assert manager.status(plan, runner=Recorder({("launchctl", "print"): [113]}), prefix=tmp_path,
                     say=lines.append) == 3
    assert "missing: " in lines[0] and lines[-1] == "gui/501/com.soakd.agent is not loaded"


# --------------------------------------------------------------------------------------------
# systemd


def test_systemd_install_and_uninstall_into_a_prefix(user_env: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "prefix"
    plan = systemd_plan(False)
    unit_path = user_env / ".config/systemd/user/soakd.service"
    assert plan.service_file.path == unit_path
    runner = Recorder({("systemctl", "--user", "is-active"): [3]})
    lines: list[str] = []
    manager.install(plan, runner=runner, prefix=prefix, say=lines.append)
    assert files_under(prefix) == {unit_path.relative_to("/")}
    assert runner.calls == [
        ["systemctl", "--user", "is-active", "--quiet", "soakd.service"],
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", "--now", "soakd.service"],
    ]
    assert any("loginctl enable-linger alice" in line for line in lines)

    running = Recorder()  # is-active says 0: the old definition runs, so restart it
    manager.install(plan, runner=running, prefix=prefix, say=lambda line: None)
    assert running.calls[-1] == ["systemctl", "--user", "restart", "soakd.service"]

    runner = Recorder()
    manager.uninstall(plan, runner=runner, prefix=prefix, say=lambda line: None)
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
    manager.install(plan, runner=runner, prefix=tmp_path, say=lambda line: None)
    assert [call[:2] for call in runner.calls] == [
        ["systemctl", "is-active"], ["systemctl", "daemon-reload"], ["systemctl", "enable"]]
    assert manager.status(plan, runner=Recorder({("systemctl", "status"): [3]}), prefix=tmp_path,
                     say=lambda line: None) == 3


# --------------------------------------------------------------------------------------------
# platform detection and the CLI


def test_detect_manager(tmp_path: Path) -> None:
    assert install_spec.detect_manager("darwin", tmp_path) == "launchd"
    with pytest.raises(install_spec.ServiceError, match="no supported service manager"):
        install_spec.detect_manager("linux", tmp_path)
    (tmp_path / "run/systemd/system").mkdir(parents=True)
    assert install_spec.detect_manager("linux", tmp_path) == "systemd"
    with pytest.raises(install_spec.ServiceError, match="no supported service manager"):
        install_spec.detect_manager("win32", tmp_path)


def test_root_must_ask_for_the_system_service(root_env: None) -> None:
    with pytest.raises(install_spec.ServiceError, match="--system"):
        install_spec.resolve_spec("systemd", system=False)


def test_a_user_cannot_install_the_system_service(user_env: Path) -> None:
    with pytest.raises(install_spec.ServiceError, match="needs root"):
        install_spec.resolve_spec("systemd", system=True)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`soakd` in this process, through daemon.cli's parser and error handling."""
    return run_main(argv, capsys)


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


