"""Decode cache (DeCache): Parquet decoded once into shared memory.

Entries are keyed by file identity (absolute path, size, mtime), row group,
column and the pushed-down filter, so a changed file never hits a stale entry
and two sources with different filters never share rows.  Each entry holds one
column chunk as a zerrow Share (fds only); every node and every concurrent
DAG of the runtime attaches the same memory.

Row groups are planned here (with Parquet statistics pruning through
``pyarrow.dataset``); decoding itself runs in workers, one task per row group
and set of missing columns.  In-flight decodes are shared: a second DAG that
needs a key being decoded waits for it instead of decoding it again.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class FileId:
    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> "FileId":
        st = os.stat(path)
        return cls(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class RowGroupRead:
    """One decode unit: a row group of a file, some columns, one filter."""

    file: FileId
    row_group: int
    filter_key: str


class CacheEntry:
    """A decoded column chunk.  Freed when no reader holds it and it is not cached."""

    def __init__(self, key, payload, cost_s: float, on_free):
        self.key = key
        self.payload = payload
        self.cost_s = cost_s
        self.refs = 0
        self.cached = False
        self.hits = 0
        self.last_used = time.monotonic()
        self._on_free = on_free

    @property
    def nbytes(self) -> int:
        return self.payload.nbytes

    def cost_per_byte(self) -> float:
        return self.cost_s / max(1, self.nbytes)

    def acquire(self) -> "CacheEntry":
        self.refs += 1
        self.last_used = time.monotonic()
        return self

    def replace_payload(self, payload) -> None:
        """The same chunk in another form (moved to disk by a spill); closes the old one."""
        old, self.payload = self.payload, payload
        old.close()

    def release(self) -> None:
        self.refs -= 1
        if self.refs <= 0 and not self.cached:
            self._free()

    def _free(self):
        if not self.payload.closed:
            self.payload.close()
            self._on_free(self)


class DecodeCache:
    """Index of decoded column chunks plus Parquet metadata for planning."""

    def __init__(self, on_free, max_entry_bytes: int | None = None,
                 max_bytes: int | None = None):
        self.entries: dict = {}
        self.max_bytes = max_bytes  # what idle entries may hold between runs (None: no bound)
        self._waiters: dict = {}  # key being decoded -> callbacks(entry, error)
        self._meta: dict = {}
        self._on_free = on_free
        self.max_entry_bytes = max_entry_bytes
        self.hits = self.misses = 0
        self.decoded_bytes = 0
        self.evictions = 0

    # ---------------------------------------------------------------- planning
    def plan(self, source):
        """Schema of the source's output and the row groups it must read."""
        import pyarrow.dataset as ds
        from pyarrow.fs import LocalFileSystem

        files = source.files()
        fmt = ds.ParquetFileFormat()
        reads, schema = [], None
        for path in files:
            fid = FileId.of(path)
            meta = self._meta.get(fid)
            if meta is None:
                frag = fmt.make_fragment(path, filesystem=LocalFileSystem())
                meta = self._meta[fid] = (frag, frag.physical_schema)
            frag, phys = meta
            schema = schema or phys
            if source.filter is not None:
                rgs = [f.row_groups[0].id for f in frag.split_by_row_group(source.filter, schema=phys)]
            else:
                rgs = range(frag.metadata.num_row_groups)
            reads += [RowGroupRead(fid, rg, source.filter_key()) for rg in rgs]
        names = source.columns if source.columns is not None else schema.names
        missing = [c for c in names if c not in schema.names]
        if missing:
            raise KeyError(f"source {source.name!r}: no column(s) {missing} in {files[0]} "
                           f"(has {', '.join(schema.names)})")
        out_schema = pa.schema([schema.field(c) for c in names])
        return out_schema, schema, reads

    @staticmethod
    def key(read: RowGroupRead, column: str):
        return (read.file, read.row_group, column, read.filter_key)

    # ---------------------------------------------------------------- lookups
    def get(self, key):
        """A cached entry (acquired for the caller) or None."""
        e = self.entries.get(key)
        if e is None:
            self.misses += 1
            return None
        self.hits += 1
        e.hits += 1
        return e.acquire()

    def add(self, key, payload, cost_s: float) -> CacheEntry:
        """Wrap a freshly decoded chunk; admission decides whether it stays cached."""
        old = self.entries.get(key)
        if old is not None:  # never two cached entries for one key
            self.evict(old)
        e = CacheEntry(key, payload, cost_s, self._on_free)
        self.decoded_bytes += payload.nbytes
        if self.max_entry_bytes is None or payload.nbytes <= self.max_entry_bytes:
            e.cached = True
            self.entries[key] = e
        return e

    def store(self, read: RowGroupRead, columns, payloads, seconds: float, track) -> None:
        """A worker decoded ``columns`` of ``read`` into ``payloads`` (one each,
        in order) in ``seconds``: cache each chunk, costing its share of the time
        by bytes, and hand it to its waiters. ``track(payload)`` is called on
        each first, so that its memory counts before anyone reads it."""
        total = sum(p.nbytes for p in payloads) or 1
        for col, payload in zip(columns, payloads):
            track(payload)
            entry = self.add(self.key(read, col), payload, seconds * payload.nbytes / total)
            self.resolve(entry.key, entry)

    # ---------------------------------------------------------- decodes in flight
    def wait(self, key, waiter) -> bool:
        """Call ``waiter(entry, error)`` once ``key`` is decoded (or failed);
        True when the caller must start that decode (nobody was decoding it)."""
        first = key not in self._waiters
        self._waiters.setdefault(key, []).append(waiter)
        return first

    def awaited(self, key) -> bool:
        """Does anyone still wait for ``key``?"""
        return key in self._waiters

    def resolve(self, key, entry: CacheEntry) -> None:
        """``key`` is decoded: hand ``entry`` to everyone waiting for it."""
        entry.acquire()  # held while handing out, so no waiter's release frees it
        for waiter in self._waiters.pop(key, []):
            waiter(entry)
        entry.release()

    def fail(self, key, error: str) -> None:
        """``key`` could not be decoded: tell everyone waiting for it."""
        for waiter in self._waiters.pop(key, []):
            waiter(None, error)

    def forget_waiters(self) -> None:
        """Drop every waiter (the runs they belonged to were abandoned)."""
        self._waiters.clear()

    # ---------------------------------------------------------------- eviction
    def eviction_order(self) -> list:
        """Cheapest to re-decode per byte first; unreferenced before referenced."""
        return sorted(self.entries.values(),
                      key=lambda e: (e.refs > 0, e.cost_per_byte(), e.last_used))

    def evict(self, entry: CacheEntry) -> None:
        if self.entries.get(entry.key) is entry:
            del self.entries[entry.key]
            self.evictions += 1
        entry.cached = False
        if entry.refs <= 0:
            entry._free()

    def trim(self) -> None:
        """Evict entries nobody reads, in eviction order, until the cache fits ``max_bytes``.

        A long-lived runtime (the service) would otherwise keep every input it
        ever decoded."""
        if self.max_bytes is None:
            return
        total = self.nbytes
        for e in self.eviction_order():
            if total <= self.max_bytes or e.refs > 0:
                break  # referenced entries sort last
            total -= e.nbytes
            self.evict(e)

    def clear(self) -> None:
        for e in list(self.entries.values()):
            self.evict(e)

    @property
    def nbytes(self) -> int:
        """What the cached entries hold, in memory or on disk (``max_bytes`` bounds it)."""
        return sum(e.nbytes for e in self.entries.values())

    @property
    def disk_bytes(self) -> int:
        """The part of ``nbytes`` that a spill moved to disk."""
        return sum(e.nbytes for e in self.entries.values() if e.payload.spilled)
