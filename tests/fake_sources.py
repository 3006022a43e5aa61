"""Stand-ins shared by the sampler and source tests: a settable clock, a scripted source, and a
source module installed as a plugin."""

from __future__ import annotations

from pathlib import Path

from daemon.sources.base import Reading, Source


class Clock:
    """A clock the test moves by hand (`clock.now += 1.0`)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Scripted(Source):
    """Returns the given readings in turn (the last one repeats); exceptions are raised."""

    def __init__(self, name: str, readings: list, available: tuple[bool, str] = (True, "ok")):
        self.name = name
        self.readings = list(readings)
        self.availability = available
        self.reads = 0
        self.probes = 0
        self.closed = False

    def available(self) -> tuple[bool, str]:
        self.probes += 1
        if isinstance(self.availability, Exception):
            raise self.availability
        return self.availability

    def read(self) -> Reading:
        self.reads += 1
        item = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def install_source_plugin(site: Path, module: str, source: str, entry: str) -> Path:
    """Write `source` as module `module` into a new folder `site` with the distribution metadata
    that declares it as soakd source `entry` (the `soakd.sources` entry point), as `pip install`
    would leave it in site-packages. Returns `site`, for a worker's or daemon's PYTHONPATH."""
    site.mkdir()
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    name = module.replace("_", "-")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[soakd.sources]\n{entry} = {module}\n")
    return site
