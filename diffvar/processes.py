"""Signals and child processes: a stop request by signal, and children that end with their parent.

    with Stop() as stop:            # SIGTERM only counts inside the block
        while not stop.requested: ...

The trainer stops at a SIGTERM (it saves a checkpoint first); the sweep runner also stops at Ctrl-C and passes
the first signal on to its trials, killing them at the second (Stop.count).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable, Iterable

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a child gets when its parent dies (Linux)


class Stop:
    """While in use (entered from the main thread), `signals` are only counted: `count` of them arrived,
    `requested` once one has. Nothing else happens in the handler: one that printed could re-enter stdout.
    The previous handlers come back on exit."""

    def __init__(self, signals: Iterable[signal.Signals] = (signal.SIGTERM,)):
        self.signals, self.count, self._previous = tuple(signals), 0, {}

    @property
    def requested(self) -> bool:
        return self.count > 0

    def _count(self, signum, frame):
        self.count += 1

    def __enter__(self) -> Stop:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._count) for s in self.signals}
        return self

    def __exit__(self, *exc) -> bool:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


def die_with_parent(signum: int) -> None:
    """Asks Linux to send this process `signum` when its parent dies (prctl PR_SET_PDEATHSIG); nothing
    elsewhere. For a child between fork and exec (subprocess's preexec_fn)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signum))


def preexec(signum: int, cpus: Iterable[int] | None = None) -> Callable[[], None]:
    """subprocess's preexec_fn: pin the child to `cpus` (None: as the parent) and die_with_parent(signum)."""

    def setup():
        if cpus:
            os.sched_setaffinity(0, cpus)
        die_with_parent(signum)

    return setup
