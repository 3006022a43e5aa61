#!/usr/bin/env python3
"""Write the job files `soakd service install` renders, for an example user, into launchd/examples/.

    python launchd/render_examples.py           # rewrite the examples
    python launchd/render_examples.py --check   # exit 1 if a committed example differs

The source of truth is the daemon/install package (plists built with plistlib, the other
files from its templates/); these copies are here to be read and reviewed, and a test
(tests/daemon/install/test_install_render.py) checks they equal what the code renders for:
user `alice` (uid 501, group staff) with a virtual environment at /opt/soakd/venv, default
paths for macOS (launchd) and Linux (systemd), no config file, installed from a wheel.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

from daemon.clitools import write_or_check  # noqa: E402
from daemon.install.render import make_plan  # noqa: E402
from daemon.install.spec import ServiceSpec  # noqa: E402

PYTHON = Path("/opt/soakd/venv/bin/python")
SPECS: dict[str, ServiceSpec] = {
    "macos-agent": ServiceSpec("launchd", False, PYTHON, Path("/Users/alice/Library/Application Support/soakd"),
                               None, Path("/Users/alice/Library/Logs/soakd"), "alice", "staff", 501),
    "macos-daemon": ServiceSpec("launchd", True, PYTHON, Path("/Library/Application Support/soakd"), None,
                                Path("/Library/Logs/soakd"), "root", "wheel", 0),
    "linux-user": ServiceSpec("systemd", False, PYTHON, Path("/home/alice/.local/state/soakd"), None,
                              Path("/home/alice/.local/state/soakd/logs"), "alice", "alice", 1000),
    "linux-system": ServiceSpec("systemd", True, PYTHON, Path("/var/lib/soakd"), None,
                                Path("/var/lib/soakd/logs"), "root", "root", 0),
}


def render_all() -> dict[str, str]:
    """Example file name ("macos-agent/com.soakd.agent.plist", ...) -> its text."""
    files: dict[str, str] = {}
    for name, spec in SPECS.items():
        plan = make_plan(spec)
        for rendered in (*plan.files, *(final for _, final in plan.root_files)):
            files[f"{name}/{rendered.path.name}"] = rendered.content
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the examples (or with --check compare them); exit 1 when one is out of date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if an example differs")
    args = parser.parse_args(argv)
    return write_or_check(render_all(), EXAMPLES, args.check, "python launchd/render_examples.py")


if __name__ == "__main__":
    sys.exit(main())
