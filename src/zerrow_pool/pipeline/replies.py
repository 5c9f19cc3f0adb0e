"""Replies: what becomes of a busy worker's answer.

The coordinator's loop hands over each worker whose socket is readable;
``Replies.take`` reads its reply (the worker is idle again, or replaced when
it died or ends itself: workers.py), notes the task's peak against what was
held when it was sent, and then:

- a node's or a read's output becomes a payload (its descriptors or its
  file, never mapped here) and completes its step;
- a decode's chunks go into the decode cache and to whoever waits for them
  (source_reads.py), then the memory policy tidies up;
- a failure, the task's own or its worker's death, runs the task again while
  the one retry rule allows it (``run_state.may_retry``: a node's attempts
  are on its record, a decode's on itself), else fails the step (a decode:
  every source that waits for it);
- a reply for a step that is no longer running is dropped, its descriptors
  closed.
"""
from __future__ import annotations

from . import run_state
from .states import Op, Status
from .wire import close_fds
from .workers import WorkerLost


class Replies:
    """Takes the replies of ``pool``'s workers (a ``WorkerPool``).

    ``transport`` turns a published output into a payload; ``resources`` (a
    ``ResourceManager``) notes each task's peak; ``sources`` (``SourceReads``,
    None without the decode cache) takes the decodes. The loop's transitions
    come in as callbacks: ``complete(run, name, payload, timing, peak)``,
    ``fail(run, name, error)``, ``retry(task, error)`` (queue the task again)
    and ``tidy()`` (the memory policy, after new cache entries).
    """

    def __init__(self, pool, transport, resources, sources, *, complete, fail, retry, tidy):
        self.pool, self.transport = pool, transport
        self.resources, self.sources = resources, sources
        self._complete, self._fail, self._retry, self._tidy = complete, fail, retry, tidy

    def take(self, w) -> None:
        """Read busy worker ``w``'s reply and act on it (module docstring)."""
        task = w.task
        try:
            reply, fds = self.pool.take_reply(w)
        except WorkerLost as e:
            self._failed(task, f"{e} while running {task.describe()}")
            return
        self.resources.note_worker_peak(task.held_at_dispatch, reply.peak)
        if not reply.ok:
            close_fds(fds)
            self._failed(task, reply.error)
        elif task.op == Op.DECODE:
            self.sources.decoded(task, reply, fds)
            self._tidy()
        elif task.run.status(task.name) != Status.RUNNING:
            close_fds(fds)
        else:
            payload = self.transport.payload(reply.result, fds)
            self._complete(task.run, task.name, payload, reply.timing, reply.peak)

    def _failed(self, task, error: str) -> None:
        run, name = task.run, task.name
        if task.op == Op.DECODE:  # if not retried, its waiters' sources fail
            retry = self.sources.decode_failed(task, error)
        elif run.status(name) != Status.RUNNING:
            return
        else:
            retry = run_state.may_retry(run.rec[name].attempts, run.pipeline.by_name[name].retries)
            if not retry:
                self._fail(run, name, error)
        if retry:
            self._retry(task, error)
