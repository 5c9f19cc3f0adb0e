"""Spilling cold intermediates to local disk as Arrow IPC files.

A spilled intermediate becomes a ``FilePayload`` on disk (a file without a
name, see ``rundirs.anonymous_file``); its consumers
memory-map it back on use (page cache, not shared memory), so spilling frees
exactly the shared memory the payload held.  Files go to a private run
directory under ``spill_dir`` (default ``$ZERROW_SPILL_DIR``, else the system
temp directory), see ``rundirs``.
"""
from __future__ import annotations

import os
import shutil


from . import rundirs
from .payloads import FilePayload, open_input, write_file

PREFIX = "zerrow-spill"


class Spiller:
    """Spills payloads into a run directory made on first use.

    Parameters
    ----------
    base : str, optional
        Directory under which the private ``zerrow-spill-<uid>/run-...``
        directory is made; ``$ZERROW_SPILL_DIR`` or the temp directory by
        default (local disk, never /dev/shm: that is RAM).
    """

    def __init__(self, base: str | None = None):
        self.base = base or rundirs.spill_base()
        self.dir = None  # made on the first spill
        self.bytes_spilled = 0
        self.count = 0
        parent = os.path.join(self.base, f"{PREFIX}-{os.getuid()}")
        if os.path.isdir(parent) and not os.path.islink(parent):
            rundirs.sweep(parent)  # what runs killed earlier left behind

    def spill(self, payload) -> FilePayload:
        """Write ``payload`` to disk and release its memory; returns the disk payload."""
        if self.dir is None:
            self.dir = rundirs.make_run_dir(self.base, PREFIX)
        fd = rundirs.anonymous_file(self.dir)
        try:
            if isinstance(payload, FilePayload):
                with os.fdopen(os.dup(payload.fd), "rb") as src, os.fdopen(os.dup(fd), "wb") as dst:
                    shutil.copyfileobj(src, dst, 8 << 20)
            else:
                fds: list = []
                table = open_input(payload.encode(fds), fds)
                write_file(fd, table)
                del table
            ro = rundirs.reopen_read_only(fd)
        finally:
            os.close(fd)
        out = FilePayload(ro, payload.rows, payload.nbytes, payload.counters, spilled=True)
        payload.close()
        self.bytes_spilled += out.size
        self.count += 1
        return out

    def cleanup(self) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
