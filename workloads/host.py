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
    """A human name for the processor: the Apple chip, the CPU model, or the machine type."""
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
