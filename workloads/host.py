"""Facts about the host recorded with every result and exported as soakd_info."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import cache
from importlib import metadata


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


@cache
def chip() -> str:
    """A human name for the processor: the Apple chip (sysctl machdep.cpu.brand_string), the
    CPU model (/proc/cpuinfo), or the machine type; computed once per process, never raises."""
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=2, check=False).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def host_info() -> dict[str, str]:
    """hostname, chip, machine, os, os_version (macOS's product version on Darwin, else the
    kernel release), python, torch and coremltools versions ("absent" when not installed) and
    cpu_count, all as strings; computed once per process."""
    system = platform.system()
    os_version = platform.mac_ver()[0] if system == "Darwin" else platform.release()
    return {
        "hostname": platform.node(),
        "chip": chip(),
        "machine": platform.machine(),
        "os": system,
        "os_version": os_version,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "coremltools": _version("coremltools"),
        "cpu_count": str(os.cpu_count() or 0),
    }
