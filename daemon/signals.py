"""Signal handling from the first instant of `soakd run`.

`install()` runs before anything slow (building the command line, reading the config, opening
the journal, binding the HTTP port, starting the scheduler). From then on SIGUSR1, SIGUSR2 and
SIGHUP are queued and SIGTERM/SIGINT ask for a stop, so no signal during start-up ends the
daemon with its default action (SIGUSR1's default exits with 138 and leaves a stale pid file).
The service dispatches the queue once it is ready, saying in the log which signals arrived
during start-up; a stop requested during start-up ends it cleanly (exit 0) at the next step.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import deque
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
HANDLED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, *STOP_SIGNALS)


class SignalInbox:
    """Signals received and not yet dispatched: (signal number, monotonic time received)."""

    def __init__(self) -> None:
        self.stop = threading.Event()  # set by SIGTERM/SIGINT, shared with the rotation runner
        self.wake = threading.Event()  # set by every signal: the main loop looks at the queue
        self._queue: deque[tuple[int, float]] = deque()

    def handler(self, signum: int, _frame: Any) -> None:
        """The signal handler: note the signal (and set `stop` for SIGTERM/SIGINT), nothing more."""
        # Runs between bytecodes of the main thread: only note the signal.
        if signum in STOP_SIGNALS:
            self.stop.set()
        self._queue.append((signum, time.monotonic()))
        self.wake.set()

    def take(self) -> list[tuple[int, float]]:
        """Every queued signal, oldest first, removed from the queue."""
        out = []
        while self._queue:
            out.append(self._queue.popleft())
        return out

    @staticmethod
    def names(entries: list[tuple[int, float]]) -> list[str]:
        """The signal names of `take()`'s entries, e.g. ["SIGUSR1", "SIGTERM"]."""
        return [signal.Signals(signum).name for signum, _ in entries]


_inbox: SignalInbox | None = None


def install() -> SignalInbox:
    """The process's inbox, its handlers installed on the first call (main thread only)."""
    global _inbox
    if _inbox is None:
        inbox = SignalInbox()
        for signum in HANDLED:
            signal.signal(signum, inbox.handler)
        _inbox = inbox
    return _inbox
