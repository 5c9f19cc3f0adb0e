"""What the coordinator holds for each intermediate, and how inputs are opened.

Coordinator side: a *payload* is the handle of one node output (or one cached
decode).  It never maps data: a ``SharePayload`` is a zerrow descriptor plus
read-only fds, a ``FilePayload`` is an Arrow IPC file (without a name, in /dev/shm
for the copy transport); either can be spilled to local disk (``spill.py``).  ``memory()`` tells how many bytes
of RAM the payload keeps alive, keyed by the segment/file identity so that
memory shared by several payloads (resharing) is counted once.
``open_output(payload)`` opens a finished run's output for its caller.

Worker side: ``open_input(spec, fds)`` turns an encoded payload back into a
``pyarrow.Table`` without copying.
"""
from __future__ import annotations

import os

import pyarrow as pa

from .specs import ColumnsInput, FileInput, OutputCounters, ShareInput
from .wire import close_fds


class Payload:
    """Base class: ``rows``, logical ``nbytes`` and the producer's ``OutputCounters``;
    once spilled, ``disk_bytes`` written for it."""

    spilled = False
    disk_bytes = 0

    def __init__(self, rows: int, nbytes: int, counters: OutputCounters = OutputCounters()):
        self.rows = rows
        self.nbytes = nbytes
        self.counters = counters
        self.closed = False

    def memory(self) -> dict:
        """{segment identity: resident bytes} this payload keeps alive."""
        return {}

    def encode(self, fds: list):
        """The input spec (specs.py) a worker opens; appends the fds to send to ``fds``."""
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


def file_identity(fd: int) -> tuple:
    """(device, inode): the same for every fd of one file."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _fd_memory(fd: int):
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino), st.st_blocks * 512


# A share's segment kinds (docs/SHARED_IPC.md) that the coordinator tells apart.
KERNEL_FILE = 2  # a file of the zerrow kernel module
SPILL_FILE = 3  # a spill file on disk


class SharePayload(Payload):
    """A zerrow Share seen from the coordinator: descriptor + owned read-only fds.

    ``spilled``: its segments were copied to disk (``spill.py``). A share
    produced from a spilled input can refer to such files too; only its
    segments in memory count in ``memory()``."""

    def __init__(self, descriptor: bytes, fds: list, rows: int, nbytes: int,
                 counters: OutputCounters = OutputCounters(), *, spilled=False):
        super().__init__(rows, nbytes, counters)
        self.descriptor = descriptor
        self.fds = list(fds)
        self.spilled = spilled
        self._memory = None

    def memory(self) -> dict:
        if self.closed or self.spilled:
            return {}
        if self._memory is None:
            from .._sharing import segment_kinds

            kinds = segment_kinds(self.descriptor)
            self._memory = dict(_fd_memory(fd) for fd, kind in zip(self.fds, kinds)
                                if kind != SPILL_FILE)
        return self._memory

    def encode(self, fds: list) -> ShareInput:
        if self.closed:
            raise RuntimeError("payload already released")
        start = len(fds)
        fds.extend(self.fds)
        return ShareInput(self.descriptor, (start, len(self.fds)))

    def close(self) -> None:
        if not self.closed:
            close_fds(self.fds)
            self.fds = []
        super().close()


class FilePayload(Payload):
    """An Arrow IPC file without a name (see ``rundirs.anonymous_file``), held
    as a read-only descriptor and memory-mapped by the workers it is sent to."""

    def __init__(self, fd: int, rows: int, nbytes: int,
                 counters: OutputCounters = OutputCounters(), *, spilled=False):
        super().__init__(rows, nbytes, counters)
        self.fd = fd
        self.spilled = spilled
        self._memory = None

    def memory(self) -> dict:
        if self.closed or self.spilled:
            return {}  # spilled files live on disk; only page cache backs them
        if self._memory is None:
            self._memory = dict([_fd_memory(self.fd)])
        return self._memory

    def encode(self, fds: list) -> FileInput:
        if self.closed:
            raise RuntimeError("payload already released")
        fds.append(self.fd)
        return FileInput((len(fds) - 1, 1))

    def close(self) -> None:
        if not self.closed:
            close_fds([self.fd])
        super().close()


class ColumnsPayload(Payload):
    """A source's output assembled from decode-cache entries (one per column
    per row group); the worker stitches them into a Table, zero-copy.

    Takes over one reference to every entry it is given (released by close).
    """

    def __init__(self, schema: pa.Schema, columns: list, rows: int, *, spilled=False):
        entries = [e for col in columns for e in col]
        nbytes = sum(e.payload.nbytes for e in entries)
        # Column chunks of one row group share segments: what a reader can see
        # beyond the data is the segments' size minus the data, counted once.
        exposed = max(0, sum(_segments(entries).values()) - nbytes)
        counters = OutputCounters(sum(e.payload.counters.bytes_zero_copy for e in entries),
                                  sum(e.payload.counters.bytes_copied for e in entries), exposed)
        super().__init__(rows, nbytes, counters)
        self.schema = schema
        self.columns = columns  # list (per field) of lists of CacheEntry (in memory or on disk)
        self.spilled = spilled

    def memory(self) -> dict:
        return {} if self.closed else _segments(e for col in self.columns for e in col)

    def encode(self, fds: list) -> ColumnsInput:
        cols = []
        for col in self.columns:
            cols.append([e.payload.encode(fds) for e in col])
        return ColumnsInput(self.schema, cols)

    def close(self) -> None:
        if not self.closed:
            for col in self.columns:
                for e in col:
                    e.release()
            self.columns = []
        super().close()


def _segments(entries) -> dict:
    """What the payloads of decode-cache ``entries`` keep alive, each segment once."""
    out = {}
    for e in entries:
        out.update(e.payload.memory())
    return out


def open_output(payload: Payload):
    """The table ``payload`` holds, opened in this process (a run's outputs,
    handed to the caller); closing ``payload`` afterwards leaves it readable."""
    fds: list = []
    return open_input(payload.encode(fds), fds)


def write_file(fd: int, table: pa.Table) -> int:
    """Write ``table`` as an Arrow IPC file through ``fd`` (a new empty file, see
    ``rundirs.anonymous_file``); returns the bytes written.

    Through ``fd`` itself, not a reopen of /proc/self/fd/N for writing: that
    truncates, and ext4 flushes a file truncated and rewritten when it is closed
    (its replace-via-truncate heuristic, ``auto_da_alloc``), which doubled the
    time of a 387 MiB spill to /tmp here (bench/RESULTS.md, session 7)."""
    with os.fdopen(os.dup(fd), "wb", buffering=0) as f:
        sink = pa.PythonFile(f, mode="w")
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.tell()


# --------------------------------------------------------------- worker side

def open_input(spec, fds: list):
    """Rebuild a Table from an encoded payload (runs in a worker)."""
    if isinstance(spec, FileInput):
        with pa.memory_map(f"/proc/self/fd/{fds[spec.fds[0]]}", "r") as src:
            return pa.ipc.open_file(src).read_all()
    if isinstance(spec, ShareInput):
        return _attach(spec, fds)
    if isinstance(spec, ColumnsInput):
        schema = spec.schema
        arrays = []
        for f, parts in zip(schema, spec.cols):
            chunks = []
            for p in parts:
                obj = _attach(p, fds)
                chunks.extend(obj.chunks if isinstance(obj, pa.ChunkedArray) else [obj])
            arrays.append(pa.chunked_array(chunks, type=f.type))
        return pa.Table.from_arrays(arrays, schema=schema)
    raise TypeError(f"not an input spec: {spec!r}")


def _attach(spec, fds):
    from .zerrow_api import require

    start, n = spec.fds
    # The coordinator, trusted, sends spill files (segment kind 3) once it spilled.
    return require().attach(spec.descriptor, fds[start:start + n], spill_files=True)
