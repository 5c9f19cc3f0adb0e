"""A Parquet source read through the decode cache: planned into row-group
reads, each column chunk found in the cache or decoded by a worker (once,
however many runs wait for it), then assembled into one ``ColumnsPayload``.
"""
from __future__ import annotations

from .payloads import ColumnsPayload


class SourceAssembly:
    """One cached source of one run waiting for its column chunks.

    ``slots`` maps (read index, column) to the cache entry held for it;
    ``missing`` counts the slots still awaited. ``wanted()`` says whether the
    source is still running; ``done(payload)`` and ``failed(error)`` end it.
    """

    def __init__(self, schema, reads, *, wanted, done, failed):
        self.schema, self.reads = schema, reads
        self.slots: dict = {}
        self.missing = 0
        self._wanted, self._done, self._failed = wanted, done, failed

    def request(self, cache, rec) -> list:
        """Take what the cache holds, wait for the rest; counts hits and misses
        on ``rec``. Returns the decodes to start: ``(read, columns)`` pairs
        nobody is decoding yet. Finishes at once when nothing is missing."""
        todo: dict = {}
        for i, read in enumerate(self.reads):
            for col in self.schema.names:
                key = cache.key(read, col)
                entry = cache.get(key)
                if entry is not None:
                    self.slots[(i, col)] = entry
                    rec.cache_hits += 1
                    continue
                rec.cache_misses += 1
                self.missing += 1
                if cache.wait(key, self._filler(i, col)):
                    todo.setdefault(i, []).append(col)
        if not self.missing:
            self._finish()
        return [(self.reads[i], cols) for i, cols in todo.items()]

    def _filler(self, i, col):
        def fill(entry, error=None):
            if not self._wanted():
                return  # the source already failed
            if error is not None:
                self._release()
                self._failed(error)
                return
            self.slots[(i, col)] = entry.acquire()
            self.missing -= 1
            if not self.missing:
                self._finish()
        return fill

    def _release(self) -> None:
        for e in self.slots.values():
            e.release()
        self.slots = {}

    def _finish(self) -> None:
        names, n = self.schema.names, len(self.reads)
        cols = [[self.slots[(i, c)] for i in range(n)] for c in names]
        rows = sum(self.slots[(i, names[0])].payload.rows for i in range(n)) if names else 0
        self.slots = {}
        self._done(ColumnsPayload(self.schema, cols, rows))
