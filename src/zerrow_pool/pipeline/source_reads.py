"""Sources read through the decode cache, as the coordinator's loop drives them.

The loop starts a source here and gets back the decode tasks to queue; it
hands back each decode's reply or failure; it asks whether a queued decode is
still wanted. Nothing here talks to a worker: source_assembly.py waits for one
run's column chunks and assembles them, decode_cache.py holds the entries and
who waits for each. A decode may serve several runs (``DecodeCache.wait``), so
it belongs to no single run: it counts its own failed attempts, and its
source's ``retries`` bound them.
"""
from __future__ import annotations

from . import run_state
from .source_assembly import SourceAssembly
from .states import Op, Status
from .tasks import Task


class SourceReads:
    """The decode cache's side of the loop.

    ``transport.payload(spec, fds)`` turns a decoded part into a payload;
    ``track(payload)`` counts a new entry as held before anyone reads it;
    ``done(run, name, payload, timing, peak)`` and ``failed(run, name, error)``
    end a source's step (the loop's own transitions).
    """

    def __init__(self, cache, transport, track, *, done, failed):
        self.cache, self.transport, self._track = cache, transport, track
        self._done, self._failed = done, failed

    def start(self, run, src) -> list:
        """Plan source ``src`` of ``run`` and wait for its column chunks: the
        decode tasks to queue, none when the cache holds every chunk (then the
        source is done before this returns). Raises what planning raises (a
        missing file or column)."""
        schema, full_schema, reads = self.cache.plan(src)
        rec = run.rec[src.name]  # decode work counts for its source
        assembly = SourceAssembly(
            schema, reads, wanted=lambda: run.status(src.name) == Status.RUNNING,
            done=lambda payload: self._done(run, src.name, payload, rec.timing, rec.peak),
            failed=lambda error: self._failed(run, src.name, error))
        return [Task(run, src.name, Op.DECODE, read=read, columns=columns, schema=full_schema,
                     filter=src.filter)
                for read, columns in assembly.request(self.cache, rec)]

    def wanted(self, task) -> bool:
        """Does any run still wait for a chunk that decode ``task`` makes?"""
        return any(self.cache.awaited(self.cache.key(task.read, c)) for c in task.columns)

    def decoded(self, task, reply, fds) -> None:
        """A worker decoded ``task`` (``reply``, a ``Done``; its parts'
        descriptors in ``fds``): its time and peak go to the source's record,
        each chunk into the cache and to whoever waits for it."""
        rec = task.run.rec[task.name]
        rec.peak = max(rec.peak, reply.peak)
        for k, v in reply.timing.items():
            rec.timing[k] = rec.timing.get(k, 0) + v
        payloads = []
        for part in reply.result.parts:
            start, n = part.fds
            payloads.append(self.transport.payload(part, fds[start:start + n]))
        self.cache.store(task.read, task.columns, payloads, reply.timing["total_s"], self._track)

    def decode_failed(self, task, error: str) -> bool:
        """Decode ``task`` failed: True when it may run again; else every run
        waiting for one of its chunks is told (their sources fail)."""
        task.attempts += 1
        if run_state.may_retry(task.attempts, task.run.pipeline.by_name[task.name].retries):
            return True
        for col in task.columns:
            self.cache.fail(self.cache.key(task.read, col), error)
        return False
