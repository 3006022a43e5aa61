"""Parser for powermetrics' default text output (logs from codecarbon, asitop users, `> file`).

Covers the layouts in FORMAT.md section 3: Apple Silicon from Big Sur (11) to macOS 26, and
Intel Macs. All Apple Silicon power lines are integer mW (`CPU Power: 1194 mW`); Intel prints
one package figure in W (`Intel energy model derived package power (CPUs+GT+SA): 1.63W`).

| line                                    | component | where                      |
|-----------------------------------------|-----------|----------------------------|
| `CPU Power` / `GPU Power` / `ANE Power` | cpu/gpu/ane | Monterey+ (GPU also 11)  |
| `Clusters Total Power`                  | cpu       | Big Sur (sum of cluster power = CPU power) |
| `Combined Power (CPU + GPU + ANE)`      | combined  | Ventura+                   |
| `Package Power` / `DRAM Power`          | package/dram | Big Sur, Monterey       |
| `Intel energy model derived package power` | package | Intel (W)                |

Energy is power x elapsed (the text has no energy counters), see `build_sample`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from daemon import levels
from daemon.sources.base import label_value
from daemon.sources.powermetrics_plist import PowermetricsParseError, PowermetricsSample, build_sample

_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_HEADER = re.compile(
    r"^\*\*\* Sampled system activity \((?P<when>[^()]*)\) \(\s*" + _NUMBER
    + r"\s*ms elapsed\) \*\*\*\s*$")
_SECTION = re.compile(r"^\*{3,4}\s+(?P<name>[^*]+?)\s+\*{3,4}\s*$")
_POWER_MW = re.compile(r"^(CPU|GPU|ANE|DRAM|Package|Clusters Total) Power:\s*" + _NUMBER
                       + r"\s*mW\s*$")
_COMBINED_MW = re.compile(r"^Combined Power \(CPU \+ GPU \+ ANE\):\s*" + _NUMBER + r"\s*mW\s*$")
_INTEL_W = re.compile(r"^Intel energy model derived package power \([^)]*\):\s*" + _NUMBER
                      + r"\s*W\s*$")
_INTEL_FREQ = re.compile(r"^System Average frequency as fraction of nominal:.*\(\s*" + _NUMBER
                         + r"\s*Mhz\)\s*$", re.IGNORECASE)
_CLUSTER_FREQ = re.compile(r"^([A-Za-z0-9]+-Cluster) HW active frequency:\s*" + _NUMBER
                           + r"\s*MHz\s*$")
_GPU_FREQ = re.compile(r"^GPU (?:HW )?active frequency:\s*" + _NUMBER + r"\s*MHz\s*$")
_PRESSURE = re.compile(r"^Current pressure level:\s*(\S.*?)\s*$")
_MODEL = re.compile(r"^Machine model:\s*(\S.*?)\s*$")
_OS = re.compile(r"^OS version:\s*(\S.*?)\s*$")
# "Tue Nov 28 14:37:01 2023 +0100": parsed by hand so the locale does not matter.
_WHEN = re.compile(r"^\w{3}\s+(\w{3})\s+(\d{1,2})\s+(\d{1,2}):(\d{2}):(\d{2})\s+(\d{4})\s+"
                   r"([+-])(\d{2})(\d{2})$")
_MONTHS = {m: i + 1 for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"))}
_COMPONENT = {"CPU": "cpu", "GPU": "gpu", "ANE": "ane", "DRAM": "dram", "Package": "package",
              "Clusters Total": "clusters_total"}
_POWER_SECTIONS = ("processor usage", "gpu usage")


def parse_sample_time(text: str) -> datetime | None:
    """The header's local time with its UTC offset, or None if it does not parse."""
    match = _WHEN.match(text.strip())
    if not match:
        return None
    month, day, hour, minute, second, year, sign, off_h, off_m = match.groups()
    if month not in _MONTHS:
        return None
    offset = timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        return datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute),
                        int(second), tzinfo=timezone(-offset if sign == "-" else offset))
    except ValueError:
        return None


class _Builder:
    """Accumulates one sample's lines."""

    def __init__(self, when: str, elapsed_ms: float) -> None:
        self.when = when
        self.elapsed_ms = elapsed_ms
        self.power_w: dict[str, float] = {}
        self.gpu_mhz: float | None = None
        self.clusters_mhz: dict[str, float] = {}
        self.pressure: str | None = None

    def line(self, section: str | None, text: str) -> None:
        if section in _POWER_SECTIONS or section is None:
            if match := _POWER_MW.match(text):
                # GPU Power is printed twice (processor footer and GPU section): keep the first.
                self.power_w.setdefault(_COMPONENT[match[1]], float(match[2]) / 1000.0)
            elif match := _COMBINED_MW.match(text):
                self.power_w.setdefault("combined", float(match[1]) / 1000.0)
            elif match := _INTEL_W.match(text):
                self.power_w.setdefault("package", float(match[1]))
            elif match := _CLUSTER_FREQ.match(text):
                self.clusters_mhz.setdefault(label_value(match[1]), float(match[2]))
            elif match := _INTEL_FREQ.match(text):
                self.clusters_mhz.setdefault("system_average", float(match[1]))
            elif (match := _GPU_FREQ.match(text)) and self.gpu_mhz is None:
                self.gpu_mhz = float(match[1])
        if (section == "thermal pressure" or section is None) and (
                match := _PRESSURE.match(text)):
            self.pressure = match[1]

    def sample(self, hw_model: str | None, os_build: str | None) -> PowermetricsSample:
        power = dict(self.power_w)
        clusters_total = power.pop("clusters_total", None)
        if clusters_total is not None and "cpu" not in power:
            power["cpu"] = clusters_total  # Big Sur prints no CPU Power line
        return build_sample(
            elapsed_seconds=self.elapsed_ms / 1000.0,
            timestamp=parse_sample_time(self.when),
            power_watts=power,
            thermal_pressure=levels.from_powermetrics(self.pressure),
            gpu_frequency_hz=None if self.gpu_mhz is None else self.gpu_mhz * 1e6,
            cluster_frequency_hz={k: v * 1e6 for k, v in self.clusters_mhz.items()},
            hw_model=hw_model,
            os_build=os_build,
        )


def parse_text(data: str | bytes) -> list[PowermetricsSample]:
    """Every sample in a powermetrics text log. Raises PowermetricsParseError if there is none.

    The stream header (`Machine model`, `OS version`) is optional: excerpts cut from the
    middle of a log parse too. Leading NULs (a log truncated while powermetrics ran) are
    ignored. A sample with no recognised lines still counts, with empty power.
    """
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    text = text.replace("\x00", "")
    if text.lstrip().startswith(("<?xml", "<plist")):
        raise PowermetricsParseError("this is plist output, not text (use --format plist)")
    hw_model = os_build = None
    builders: list[_Builder] = []
    section: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if match := _HEADER.match(line):
            builders.append(_Builder(match["when"], float(match[2])))
            section = None
            continue
        if match := _SECTION.match(line):
            section = " ".join(match["name"].split()).lower()
            continue
        if not builders:
            if match := _MODEL.match(line):
                hw_model = match[1]
            elif match := _OS.match(line):
                os_build = match[1]
            continue
        builders[-1].line(section, line)
    if not builders:
        raise PowermetricsParseError("no '*** Sampled system activity' header: not powermetrics "
                                     "text output")
    samples = []
    for index, builder in enumerate(builders):
        try:
            samples.append(builder.sample(hw_model, os_build))
        except PowermetricsParseError as exc:
            raise PowermetricsParseError(f"sample {index + 1}: {exc}") from None
    return samples
