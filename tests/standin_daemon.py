"""`python -m standin_daemon run ...`: the real `soakd run`, accepting in its config the stand-in
backends named in SOAKD_EXTRA_BACKENDS (tests/fake_backends.py).

The config accepts only the built-in backend names (daemon/config.py); the hook that resolves a
stand-in (`workloads.backends.EXTRA_BACKENDS_ENV`) is a test hook the config does not know. This
adds the hooked names to the built-in list before the CLI reads its config; everything else is
the daemon as users run it. Workers inherit the environment (and PYTHONPATH), so they resolve the
same stand-ins.
"""

from __future__ import annotations

import os
import sys

import workloads.backends as backends

_names = [entry.partition("=")[0].strip()
          for entry in os.environ.get(backends.EXTRA_BACKENDS_ENV, "").split(",") if entry.strip()]
backends.BACKEND_NAMES = (*backends.BACKEND_NAMES, *_names)

from daemon.cli import main  # noqa: E402 - after the names are in

if __name__ == "__main__":
    sys.exit(main())
