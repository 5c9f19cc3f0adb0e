"""Spilling cold intermediates to local disk as Arrow IPC files.

A spilled intermediate becomes a ``FilePayload`` on disk; its consumers
memory-map it back on use (page cache, not shared memory), so spilling frees
exactly the shared memory the payload held.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid

import pyarrow as pa

from .payloads import FilePayload, open_input


def default_spill_dir() -> str:
    """A per-process directory on local disk (never /dev/shm: that is RAM)."""
    base = os.environ.get("ZERROW_SPILL_DIR") or os.path.join(tempfile.gettempdir(), "zerrow-spill")
    return os.path.join(base, f"{os.getpid()}-{uuid.uuid4().hex[:8]}")


class Spiller:
    def __init__(self, directory: str | None = None):
        self.dir = directory or default_spill_dir()
        self.bytes_spilled = 0
        self.count = 0

    def spill(self, payload) -> FilePayload:
        """Write ``payload`` to disk and release its memory; returns the disk payload."""
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, f"{uuid.uuid4().hex}.arrow")
        if isinstance(payload, FilePayload):
            shutil.move(payload.path, path)
        else:
            fds: list = []
            table = open_input(payload.encode(fds), fds)
            with pa.OSFile(path, "wb") as sink:
                with pa.ipc.new_file(sink, table.schema) as writer:
                    writer.write_table(table)
            del table
        stats = dict(payload.stats)
        out = FilePayload(path, payload.rows, payload.nbytes, stats, spilled=True)
        payload.close()
        self.bytes_spilled += os.path.getsize(path)
        self.count += 1
        return out

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
