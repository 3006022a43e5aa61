"""A built wheel, installed with `pip install` (not editable) in a fresh virtual environment, gives
a working `soakd service install --dry-run` and `soakd report` (issue 10 item 6).

Two depths, one test:
- by default (the README's test command) the wheel goes in with `--no-deps` and the fresh venv
  borrows this venv's site-packages for the dependencies: it checks what the wheel itself
  carries (the packages, the service and report templates) in ~10 s;
- with SOAKD_WHEEL_TEST=full (.ci/run's last step) torch==2.13.0 goes in first, as the README
  does, then the wheel with its declared dependencies from the package index: it also checks
  that pyproject.toml declares everything both commands need (jinja2, matplotlib, ...).
Both run the commands from a directory outside the checkout, so nothing is imported from it.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FULL = os.environ.get("SOAKD_WHEEL_TEST") == "full"

SMALL_JOURNAL = """
import sys, time
from pathlib import Path
from daemon.journal import Journal
from daemon.records import SliceRow, TelemetryRow
journal = Journal(Path(sys.argv[1]) / "journal.sqlite3")
start = time.time() - 120
rotation = journal.start_rotation("ci", "schedule", "cpu", started_at=start)
for i, phase in enumerate(("matmul", "matmul", "conv", "conv")):
    journal.add_slice(rotation, SliceRow(
        phase=phase, requested_backend="cpu", backend="cpu", precision="fp32",
        started_at=start + 5 * i, ended_at=start + 5 * i + 4, steps=20, seconds=3.0,
        flop=3e10 * (1 - 0.05 * (i % 2)), energy_joules={"package-0": 60.0, "dram": 6.0},
        thermal_seconds={"nominal": 4.0}, checks=1))
for i in range(6):
    journal.add_telemetry(TelemetryRow(start + 4 * i, rotation, {"package-0": 15.0 + i, "dram": 1.5}, "nominal"))
journal.end_rotation(rotation, "completed", ended_at=start + 25)
journal.close()
"""


def run(argv: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def pip(python: Path, *args: str, cwd: Path) -> None:
    """This interpreter's pip, installing into `python`'s environment (pip's --python)."""
    done = run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", *args], cwd,
               timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv with the wheel installed; its bin/ directory."""
    base = tmp_path_factory.mktemp("wheel")
    # from a clean copy: an in-tree build leaves build/lib behind, and a later build would pack
    # modules that have since been deleted
    source = base / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"))
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                 "-w", str(base / "dist"), str(source)], base, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (base / "dist").glob("soakd-*.whl")
    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", str(venv)], base)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    if FULL:
        pip(python, "torch==2.13.0", cwd=base)  # first, as the README does: the CPU build
        pip(python, str(wheel), cwd=base)
    else:
        pip(python, "--no-deps", "--no-index", str(wheel), cwd=base)
        purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base)
        ours = {sysconfig.get_paths()["purelib"], *site.getsitepackages()}
        # a plain path line: this venv's packages, without its .pth files (the editable finder)
        Path(purelib.stdout.strip(), "soakd-test-deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv / "bin"


@pytest.mark.slow
@pytest.mark.timeout(1800 if FULL else 300)
def test_the_installed_wheel_installs_a_service_and_writes_a_report(fresh_venv: Path, tmp_path: Path) -> None:
    where = run([str(fresh_venv / "python"), "-c", "import daemon; print(daemon.__file__)"], tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv.parent), where  # the wheel, not the checkout

    system = ["--system"] if os.geteuid() == 0 else []  # root must ask for the system service
    for manager, expected in (("systemd", "LimitNOFILE=1024"), ("launchd", "<key>NumberOfFiles</key>")):
        done = run([str(fresh_venv / "soakd"), "service", "install", "--dry-run", "--manager", manager,
                    "--state-dir", str(tmp_path / "state"), *system], tmp_path)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout and "would write" in done.stdout
        assert str(fresh_venv / "python") in done.stdout  # the job runs this environment's interpreter

    state = tmp_path / "state"
    state.mkdir()
    made = run([str(fresh_venv / "python"), "-c", SMALL_JOURNAL, str(state)], tmp_path)
    assert made.returncode == 0, made.stderr
    done = run([str(fresh_venv / "soakd"), "report", "--state-dir", str(state), "--out", str(tmp_path / "out")],
               tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote ")
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "matmul · profile ci" in page and "<table class=\"compare\">" in page
    assert {p.name for p in (tmp_path / "out").glob("*.png")} >= {"throughput.png", "power.png", "energy.png"}
