"""Cancelling a run from any thread: a flag the loop checks at each turn, and
a socket that wakes the loop from ``select`` at once.

The loop ``arm``s it when a run starts (a cancel that came between runs is
forgotten), registers it with its selector (``fileno``), and raises
``RunCancelled`` once ``cancelled``. ``cancel`` may come from another thread,
even after ``close`` (then it does nothing). Tested without processes
(tests/test_pipeline_cancellation.py).
"""
from __future__ import annotations

import socket
import threading


class RunCancelled(RuntimeError):
    """``Runtime.cancel()`` was called while a run was in progress."""


class Cancellation:
    """One runtime's cancel request; see the module docstring."""

    def __init__(self):
        self._requested = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)

    @property
    def cancelled(self) -> bool:
        return self._requested.is_set()

    def arm(self) -> None:
        """A run starts: forget earlier requests and drain their wake-ups."""
        self._requested.clear()
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def cancel(self) -> None:
        """Ask the run in progress to stop, and wake the loop (any thread)."""
        self._requested.set()
        try:
            self._wake_w.send(b"x")
        except OSError:  # closed: the runtime is gone
            pass

    def fileno(self) -> int:
        """Readable once ``cancel`` was called (for the loop's selector)."""
        return self._wake_r.fileno()

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()
