"""The machinery the coordinator's loop drives: built in one place, closed in order.

``Machinery`` builds it from a runtime's options (options.py): the transport,
the decode cache (when on), the spiller, the ``ResourceManager`` that
measures and frees held memory (budget.py), the ``MemoryPolicy`` over it,
the copy transport's private run directory (rundirs.py), ``Messages``
(tasks.py), ``SourceReads`` (with the cache) and the pool of warm workers.
The loop only uses them; this class owns what outlives a run.

``close()`` empties the cache, closes every payload still held, stops the
workers and removes the directories, in that order. A runtime never closed
leaves no files: a finalizer does the last two when it is garbage or at
exit (its workers also exit on their own when this process goes: their
sockets close).
"""
from __future__ import annotations

import shutil
import weakref

from . import rundirs
from .budget import ResourceManager
from .decode_cache import DecodeCache
from .memory_policy import MemoryPolicy
from .options import RuntimeOptions
from .sandbox import make_undumpable
from .source_reads import SourceReads
from .spill import Spiller
from .tasks import Messages
from .transports import get_transport
from .wire import raise_fd_limit
from .workers import WorkerPool


class Machinery:
    """What a runtime with ``options`` runs on. The loop's own transitions come
    in as callbacks: ``spilled(run, name, new)`` (``MemoryPolicy``), ``done`` and
    ``failed`` (``SourceReads``: a source read through the cache ends)."""

    def __init__(self, options: RuntimeOptions, *, spilled, done, failed):
        raise_fd_limit()
        # Nodes must not read this process's descriptors (the decode cache,
        # every intermediate) through /proc, nor its memory: see sandbox.py.
        make_undumpable()
        self.transport = get_transport(options.transport)
        budget = options.memory_budget
        # cache_bytes bounds what cached decodes keep between runs.
        self.cache = (DecodeCache(self._entry_freed,
                                  max_entry_bytes=budget // 2 if budget else None,
                                  max_bytes=options.cache_bytes)
                      if options.cache else None)
        self.spiller = Spiller(options.spill_dir)
        self.resources = ResourceManager(budget, self.cache, self.spiller, options.tolerance)
        self.memory = MemoryPolicy(self.resources, spilled)
        # The copy transport's files: a private run directory (RAM by default).
        self.out_dir = rundirs.make_run_dir(options.copy_dir)
        self.messages = Messages(options, self.out_dir, self.resources)
        self.sources = (SourceReads(self.cache, self.transport,
                                    lambda p: self.resources.track(p, cached=True),
                                    done=done, failed=failed)
                        if self.cache else None)
        self._finalizer = weakref.finalize(self, _remove_dirs, self.out_dir, self.spiller)
        try:
            self.pool = WorkerPool(options.workers, options.transport, options.preload,
                                   options.isolation)
        except BaseException:
            self._finalizer()
            raise
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, self.pool, self.out_dir, self.spiller)

    def close(self) -> None:
        """Free everything held, stop the workers, remove the directories."""
        if self.cache:
            self.cache.clear()
        for p in list(self.resources.live.values()):
            p.close()
        self._finalizer()

    def _entry_freed(self, entry) -> None:
        self.resources.untrack(entry.payload)


def _shutdown(pool, out_dir, spiller) -> None:
    pool.close()
    _remove_dirs(out_dir, spiller)


def _remove_dirs(out_dir, spiller) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    spiller.cleanup()
