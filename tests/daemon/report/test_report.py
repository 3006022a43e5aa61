"""`soakd report`: plots and HTML from a real `ci` daemon's journal, and the figures on a synthetic one."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import closing
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_main
from daemon_process import REPO, Daemon, write_config

from daemon.journal import Journal
from daemon.records import SliceRow, TelemetryRow
from daemon.report import (
    INSTALL_HINT,
    Lane,
    Workload,
    add_speedups,
    choose_pair,
    lane_stats,
    select,
    sustained_series,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"throughput.png", "sustained.png", "power.png", "thermal.png", "energy.png"}
# a daemon's journal also holds verdicts: each run configuration's sustained throughput per rotation
REAL_PLOTS = ALL_PLOTS | {"history.png"}


class Page(HTMLParser):
    """The parts of index.html the tests look at: images, tables and their header cells, text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[str] = []
        self.headers: dict[str, list[str]] = {}
        self.text: list[str] = []
        self._table: str | None = None
        self._in_head = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        elif tag == "table":
            self._table = values.get("class") or ""
            self.tables.append(self._table)
            self.headers[self._table] = []
        elif tag == "thead":
            self._in_head = True
        elif tag == "th" and self._in_head:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "thead":
            self._in_head = False
        elif tag == "th" and self._cell is not None and self._table is not None:
            self.headers[self._table].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def parse_page(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def soakd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


def check_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"
    image = matplotlib.image.imread(str(path))
    height, width = image.shape[:2]
    assert width >= 800 and height >= 300, (path, image.shape)
    assert float(image[..., :3].std()) > 0.02, f"{path} looks blank"




# --- a real daemon ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_journals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """State dirs of two real `soakd run` processes (ci profile, replayed powermetrics), run side by side:
    `plain` as daemon_process writes it (backends cpu), `pair` with backends "cuda", which on a machine
    without CUDA falls back to the CPU and gets a CPU baseline beside it."""
    base = tmp_path_factory.mktemp("report-daemons")
    daemons: dict[str, Daemon] = {}
    try:
        for name in ("plain", "pair"):
            config = write_config(base / f"{name}.toml")
            if name == "pair":
                text = config.read_text(encoding="utf-8")
                # the baseline measured in this rotation (not one cached by an earlier run)
                text = text.replace('backends = "cpu"', 'backends = "cuda"\ncpu_baseline = "before"')
                config.write_text(text, encoding="utf-8")
            daemons[name] = Daemon(base / name, config)
        for process in daemons.values():
            process.wait_ready()
        for process in daemons.values():
            process.wait_for("soakd_rotations_total", 1, result="completed")
    finally:
        for process in daemons.values():
            process.stop()
    return {name: process.state_dir for name, process in daemons.items()}


@pytest.mark.slow
def test_report_from_a_real_ci_rotation(real_journals: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = soakd("report", "--state-dir", str(real_journals["plain"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "index.html" in proc.stdout
    assert {p.name for p in out.glob("*.png")} == REAL_PLOTS
    for name in REAL_PLOTS:
        check_png(out / name)
    page = parse_page(out / "index.html")
    assert set(page.images) == REAL_PLOTS  # every PNG is referenced, by relative path
    assert "compare" in page.tables
    assert page.headers["verdicts"][:2] == ["series · profile", "stability (worst / best loop)"]
    assert page.headers["conditions"] == ["rotation", "started under"]
    assert "cpu" in page.headers["compare"]
    text = " ".join(page.text)
    for phase in ("matmul", "conv", "attention"):
        assert phase in text
    assert "report generated on" in text
    assert "FLOP/s" in text and "FLOP/J" in text


@pytest.mark.slow
def test_report_from_a_real_run_sets_two_backends_side_by_side(real_journals: dict[str, Path],
                                                                tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = soakd("report", "--state-dir", str(real_journals["pair"]), "--rotation", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in REAL_PLOTS:
        check_png(out / name)
    page = parse_page(out / "index.html")
    assert set(page.images) == REAL_PLOTS
    headers = page.headers["compare"]
    assert len(headers) == 3 and headers[2] == "cpu (baseline)", headers
    text = " ".join(page.text)
    with closing(Journal(real_journals["pair"] / "journal.sqlite3", readonly=True)) as journal:
        fell_back = any(s["backend"] != s["requested_backend"] for s in journal.slices())
    if fell_back:  # no CUDA here: the cuda lane ran on the CPU and the page says so
        assert headers[1] == "cuda→cpu"
        assert "slices asked of cuda ran on cpu" in text
    else:
        assert headers[1] == "cuda"


# --- a synthetic journal ------------------------------------------------------------------------

NOW = time.time()
OLD = NOW - 3 * 86400  # rotation 1
RECENT = NOW - 3600  # rotation 2, the last finished one


def _slice(phase: str, requested: str, backend: str, start: float, flop: float, seconds: float, steps: int,
           energy: dict[str, float] | None = None, precision: str = "fp16", baseline: bool = False,
           **extra: Any) -> SliceRow:
    return SliceRow(**{"phase": phase, "requested_backend": requested, "backend": backend, "precision": precision,
            "baseline": int(baseline), "started_at": start, "ended_at": start + seconds + 0.5, "steps": steps,
            "seconds": seconds, "flop": flop, "energy_joules": energy or {},
            "thermal_seconds": {"nominal": seconds}, "checks": 2, "mismatches": 0,
            "fallback": {"from": requested, "to": backend} if requested != backend else None, **extra})


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    """Rotation 1 (old): cuda vs cpu. Rotation 2 (recent): mps vs coreml-ane with a CPU baseline, a
    fallback, mps energy but none for coreml-ane. Rotation 3: skipped. Rotation 4: still running."""
    path = tmp_path / "state" / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        r1 = journal.start_rotation("ci", "schedule", "cuda", started_at=OLD)
        journal.add_slice(r1, _slice("matmul", "cuda", "cuda", OLD + 1, 400e9, 1.0, 40,
                                     {"gpu0": 100.0, "package-0": 50.0, "dram": 10.0}, precision="fp32"))
        journal.add_slice(r1, _slice("matmul", "cpu", "cpu", OLD + 3, 20e9, 1.0, 2,
                                     {"package-0": 40.0, "dram": 10.0}, precision="fp32", baseline=True))
        journal.end_rotation(r1, "completed", ended_at=OLD + 10)

        r2 = journal.start_rotation("ci", "signal", "mps,coreml-ane", started_at=RECENT)
        mps_energy = {"combined": 10.0, "cpu": 4.0, "gpu": 6.0, "ane": 0.0}
        t = RECENT + 1
        rows = [
            _slice("matmul", "cpu", "cpu", t, 10e9, 1.0, 1, {"combined": 5.0}, precision="fp32", baseline=True),
            _slice("matmul", "mps", "mps", t + 2, 100e9, 1.0, 10, mps_energy),
            _slice("matmul", "coreml-ane", "coreml-ane", t + 4, 50e9, 1.0, 5),
            _slice("matmul", "mps", "mps", t + 6, 80e9, 1.0, 8, mps_energy),
            _slice("matmul", "coreml-ane", "coreml-ane", t + 8, 50e9, 1.0, 5, mismatches=1),
            _slice("conv", "mps", "mps", t + 10, 30e9, 1.0, 3, mps_energy),
            _slice("conv", "coreml-ane", "mps", t + 12, 20e9, 1.0, 2, mps_energy),
        ]
        for row in rows:
            journal.add_slice(r2, row)
        journal.add_event("fallback", {"from": "coreml-ane", "to": "mps", "reason": "unavailable",
                                       "detail": "<b>Core ML</b> prediction needs macOS"},
                          rotation_id=r2, at=t + 11)
        for i, level in enumerate(("nominal", "moderate", "heavy", "moderate", "surprising")):
            journal.add_telemetry(TelemetryRow(t + 3 * i, r2, {"combined": 10.0 + i, "cpu": 4.0, "gpu": 6.0 + i,
                                                               "ane": 0.0}, level))
        journal.end_rotation(r2, "completed", detail="<script>alert(1)</script>", ended_at=t + 15)

        r3 = journal.start_rotation("heavy", "schedule", "auto", started_at=NOW - 600)
        journal.end_rotation(r3, "skipped", "CI=true", ended_at=NOW - 600)
        r4 = journal.start_rotation("ci", "schedule", "cpu", started_at=NOW - 60)
        journal.add_slice(r4, _slice("matmul", "cpu", "cpu", NOW - 59, 1e9, 1.0, 1, precision="fp32"))
    return path


def _open(path: Path) -> Journal:
    return Journal(path, readonly=True)


def test_the_default_is_the_last_finished_rotation_with_slices(journal_path: Path) -> None:
    with closing(_open(journal_path)) as journal:
        selection = select(journal, now=NOW)
        assert selection.title == "rotation 2" and selection.scope == "rotation"
        assert len(selection.slices) == 7
        assert len(selection.telemetry) == 5
        assert [e["kind"] for e in selection.events] == ["fallback"]
        assert select(journal, rotation=1).slices[0]["backend"] == "cuda"
        window = select(journal, since=NOW - 2 * 3600, now=NOW)  # rotations 2, 3 and 4
        assert window.scope == "window"
        assert [r["id"] for r in window.rotations] == [2, 3, 4]
        assert len(window.slices) == 8


MATMUL, CONV = Workload("ci", "matmul"), Workload("ci", "conv")


def test_numbers_in_the_comparison(journal_path: Path) -> None:
    with closing(_open(journal_path)) as journal:
        slices = select(journal, rotation=2).slices
    stats = lane_stats(slices)
    mps, ane = Lane("mps", "mps", "fp16"), Lane("coreml-ane", "coreml-ane", "fp16")
    baseline = Lane("cpu", "cpu", "fp32", baseline=True)
    fallback = Lane("coreml-ane", "mps", "fp16")
    lanes = [baseline, mps, ane, fallback]
    pair = choose_pair(lanes)
    assert pair == [mps, ane]  # Metal vs Neural Engine, whatever else ran
    add_speedups(stats, pair)

    matmul_mps = stats[(MATMUL, mps)]
    assert matmul_mps.throughput == pytest.approx(90e9)  # (100 + 80) GFLOP over 2 s
    assert matmul_mps.speedup == pytest.approx(9.0)  # over the 10 GFLOP/s CPU baseline
    assert matmul_mps.speedup_reference == baseline
    assert matmul_mps.flop_per_joule == pytest.approx(180e9 / 20.0)  # `combined` only: no rail twice
    assert matmul_mps.joules_per_step == pytest.approx(20.0 / 18)
    assert matmul_mps.sustained_ratio == pytest.approx(0.8)

    matmul_ane = stats[(MATMUL, ane)]
    assert matmul_ane.speedup == pytest.approx(5.0)
    assert matmul_ane.flop_per_joule is None and matmul_ane.joules_per_step is None  # no energy
    assert matmul_ane.sustained_ratio == pytest.approx(1.0)
    assert matmul_ane.mismatches == 1 and matmul_ane.checks == 4
    assert matmul_ane.fallback_slices == 0 and matmul_ane.moved_to == {} and matmul_ane.asked == 2

    assert stats[(MATMUL, baseline)].speedup == pytest.approx(1.0)
    assert stats[(MATMUL, baseline)].flop_per_joule == pytest.approx(2e9)
    assert stats[(MATMUL, baseline)].sustained_ratio is None  # one slice: no ratio to show

    conv_fallback = stats[(CONV, fallback)]
    assert conv_fallback.fallback_slices == 1
    assert conv_fallback.asked == 1 and conv_fallback.moved_to == {"mps": 1}
    # conv has no CPU run: speedup is over the pair's first lane (mps, 30 GFLOP/s)
    assert conv_fallback.speedup == pytest.approx(20e9 / 30e9)
    assert conv_fallback.speedup_reference == mps

    series = sustained_series(slices)
    assert [round(p[2], 6) for p in series[(MATMUL, mps)]] == [1.0, 0.8]


def test_the_pair_is_chosen_sensibly() -> None:
    cuda, cpu = Lane("cuda", "cuda", "fp32"), Lane("cpu", "cpu", "fp32", baseline=True)
    assert choose_pair([cpu, cuda]) == [cuda, cpu]
    fell = Lane("cuda", "cpu", "fp32")
    assert choose_pair([cpu, fell]) == [fell, cpu]
    mps16, mps32 = Lane("mps", "mps", "fp16"), Lane("mps", "mps", "fp32")
    gpu, ane = Lane("coreml-gpu", "coreml-gpu", "fp16"), Lane("coreml-ane", "coreml-ane", "fp16")
    assert choose_pair([mps16, gpu, ane, cpu]) == [mps16, ane]
    assert choose_pair([mps32, mps16, ane]) == [mps16, ane]  # same precision on both sides
    # Apple backends on Linux: both fell back to the CPU; still Metal's lane vs the ANE's
    mps_cpu, ane_cpu = Lane("mps", "cpu", "fp16"), Lane("coreml-ane", "cpu", "fp16")
    assert choose_pair([cpu, ane_cpu, mps_cpu]) == [mps_cpu, ane_cpu]
    assert choose_pair([cuda]) == [cuda]


def test_write_report_on_the_synthetic_journal(journal_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with closing(_open(journal_path)) as journal:
        report = write_report(journal, out)
    assert {p.name for p in report.plots} == ALL_PLOTS
    for path in report.plots:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    raw = report.index.read_text(encoding="utf-8")
    assert "<script>" not in raw and "&lt;script&gt;" in raw  # the rotation's detail, escaped
    assert "<b>Core ML" not in raw and "&lt;b&gt;Core ML&lt;/b&gt; prediction needs macOS" in raw
    page = parse_page(report.index)
    assert set(page.images) == ALL_PLOTS
    assert page.headers["compare"] == ["", "mps", "coreml-ane"]
    assert page.headers["all"] == ["", "mps", "coreml-ane", "coreml-ane→mps", "cpu (baseline)"]
    text = " ".join(page.text)
    assert "Metal vs Neural Engine" in text
    assert "no energy source" in text  # coreml-ane recorded none
    assert "9.00×" in text and "5.00×" in text
    assert "9 GFLOP/J" in text
    # conv: the one slice asked of coreml-ane ran on mps; the pair's coreml-ane column says so
    assert "1 of 1 slices asked of coreml-ane ran on mps" in text
    assert "mps (1 slice, fallback)" in text
    assert "surprising" in text  # an unknown thermal level is named, not silently dropped


def test_no_energy_anywhere_says_so_and_draws_no_energy_plot(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        rotation = journal.start_rotation("ci", "schedule", "cpu", started_at=RECENT)
        for i in range(3):
            journal.add_slice(rotation, _slice("matmul", "cpu", "cpu", RECENT + 2 * i, 1e9 * (3 - i), 1.0, 3,
                                               precision="fp32"))
        journal.end_rotation(rotation, "completed", ended_at=RECENT + 8)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "energy.png").write_bytes(b"stale")  # from an earlier report: must not stay beside this page
    with closing(_open(path)) as journal:
        report = write_report(journal, out)
    assert {p.name for p in report.plots} == {"throughput.png", "sustained.png"}
    assert not (out / "energy.png").exists()
    page = parse_page(report.index)
    assert set(page.images) == {"throughput.png", "sustained.png"}
    text = " ".join(page.text)
    assert "no energy source" in text and "no power source" in text
    assert "Only one backend ran" in text
    assert "0.33" in text  # sustained ratio 1 GFLOP/s over 3


# --- the command line ---------------------------------------------------------------------------


def test_command_writes_a_report_for_a_rotation_and_a_window(journal_path: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    state = str(journal_path.parent)
    code, out, err = run_main(["report", "--state-dir", state, "--rotation", "1", "--out", str(tmp_path / "a")],
                              capsys)
    assert code == 0, err
    assert out.startswith("wrote ") and out.count("\n") == 1
    page = parse_page(tmp_path / "a" / "index.html")
    assert page.headers["compare"] == ["", "cuda", "cpu (baseline)"]
    assert "CUDA vs CPU" in " ".join(page.text)
    code, _, err = run_main(["report", "--state-dir", state, "--since", "2h", "--out", str(tmp_path / "b")],
                            capsys)
    assert code == 0, err
    assert "rotations (" in " ".join(parse_page(tmp_path / "b" / "index.html").text)


@pytest.mark.parametrize("argv", [
    ["--rotation", "0"],
    ["--rotation", "two"],
    ["--since", "yesterday"],
    ["--since", "1h", "--rotation", "2"],
    [],  # no --out
])
def test_bad_arguments_exit_2_with_one_line(argv: list[str], journal_path: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = [] if not argv else ["--out", str(tmp_path / "out")]
    code, stdout, err = run_main(["report", "--state-dir", str(journal_path.parent), *argv, *out], capsys)
    assert code == 2
    assert stdout == ""
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_a_usage_error(journal_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("x", encoding="utf-8")
    code, _, err = run_main(["report", "--state-dir", str(journal_path.parent), "--out", str(target)], capsys)
    assert code == 2 and "not a directory" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["--rotation", "9"], "no rotation 9"),
    (["--rotation", "3"], "rotation 3 has no slices"),
    (["--since", "2000-01-01", "--state-dir", "{empty}"], "no journal at"),
])
def test_nothing_to_report_exits_1_with_one_line(argv: list[str], message: str, journal_path: Path,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in argv]
    if "--state-dir" not in args:
        args += ["--state-dir", str(journal_path.parent)]
    code, _, err = run_main(["report", *args, "--out", str(tmp_path / "out")], capsys)
    assert code == 1
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_no_slices_in_the_window_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "journal.sqlite3"
    with closing(Journal(path)) as journal:
        rotation = journal.start_rotation("ci", "schedule", "cpu", started_at=OLD)
        journal.add_slice(rotation, _slice("matmul", "cpu", "cpu", OLD, 1e9, 1.0, 1, precision="fp32"))
        journal.end_rotation(rotation, "completed", ended_at=OLD + 2)
    code, _, err = run_main(["report", "--state-dir", str(tmp_path), "--since", "1h", "--out",
                             str(tmp_path / "out")], capsys)
    assert code == 1 and "no slices since" in err


def test_missing_matplotlib_is_one_line_and_exit_1(journal_path: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is blocked for this test')\n",
                                         encoding="utf-8")
    env_path = f"{blocker.parent}"
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from daemon.cli import main; "
         "sys.exit(main(sys.argv[2:]))", env_path, "report", "--state-dir", str(journal_path.parent),
         "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == f"soakd report: {INSTALL_HINT}"
    assert "pip install matplotlib" in proc.stderr
