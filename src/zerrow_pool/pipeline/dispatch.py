"""Dispatching: the tasks waiting for a worker, and sending them.

The coordinator's loop queues tasks here (``add``) as steps start or are
retried; at each turn ``dispatch`` sends what it can, in queue order:

- a task no longer wanted is dropped: its step stopped running, or (a
  decode) no run waits for its chunks any more (source_reads.py);
- a task is sent only once the memory policy admits it (memory_policy.py);
  one not admitted keeps its place for the next turn, and the tasks behind
  it may go first;
- it goes to the worker its step last ran in when that one is idle (its warm
  memory is sized for the step, step_history.py), else to the first idle one;
- sending a node pins its inputs (they stay in memory while it runs, see
  ``running_inputs``) and records what each costs it; once its worker took
  it, a node's or a read's attempt, start time, slot and START event count;
- a worker found dead as it is given its task has been replaced: the task
  goes back to the front of the queue, and nothing of that try is recorded
  (no attempt, no START event).
"""
from __future__ import annotations

import time
from collections import deque

from . import run_state
from .states import Op, Status


class Dispatcher:
    """Sends tasks to the workers of ``pool`` (a ``WorkerPool``).

    ``memory`` (a ``MemoryPolicy``) admits each against ``runs``, the loop's
    list of runs in progress (the same list object: the loop adds and removes
    runs); ``messages`` (``Messages``) builds its request; ``resources`` (a
    ``ResourceManager``) says what is held as it goes; ``history`` (a
    ``StepHistory``) keeps each step's worker slot; ``sources``
    (``SourceReads``, None without the decode cache) says whether a decode is
    still wanted. ``started(run, name)`` is told as a node or a read is sent.
    """

    def __init__(self, *, pool, memory, messages, resources, history, sources, runs, started):
        self.pool, self.memory, self.messages, self.resources = pool, memory, messages, resources
        self.history, self.sources, self.runs, self._started = history, sources, runs, started
        self._queue: deque = deque()

    @property
    def waiting(self) -> bool:
        """Is a task queued?"""
        return bool(self._queue)

    def add(self, tasks) -> None:
        """Queue ``tasks`` behind those waiting."""
        self._queue.extend(tasks)

    def clear(self) -> None:
        """Forget every queued task (the loop was aborted)."""
        self._queue.clear()

    def dispatch(self) -> None:
        """Send the queued tasks that can go now (module docstring)."""
        deferred = deque()
        while self._queue and self.pool.idle():
            task = self._queue.popleft()
            if not self._still_wanted(task):
                continue
            own = run_state.inputs(task.run, task.name) if task.op == Op.NODE else []
            if not self.memory.admit(task.estimate, own, self.running_inputs(), self.runs):
                deferred.append(task)
                continue
            self._send(self.pool.pick_idle(self.history.last_slot(task.run, task.name)), task)
        self._queue.extendleft(reversed(deferred))

    def running_inputs(self) -> list:
        """Per running task, the inputs it was sent (the memory policy pins them)."""
        return [w.task.pinned for w in self.pool.busy()]

    def _still_wanted(self, task) -> bool:
        if task.op == Op.DECODE:  # may serve waiters of several runs
            return self.sources.wanted(task)
        return task.run.status(task.name) == Status.RUNNING

    def _send(self, w, task) -> None:
        run, rec = task.run, task.run.rec[task.name]
        if task.op == Op.NODE:
            task.pinned = run_state.inputs(run, task.name)
            run_state.record_edges(run, task.name, task.pinned)
        task.held_at_dispatch = self.resources.usage()
        msg, fds = self.messages.build(task, w, running=len(self.pool.busy()) + 1)
        if not self.pool.give(w, task, msg, fds):  # w had died while idle: try again
            self._queue.appendleft(task)
            return
        rec.worker_pid = w.pid
        if task.op != Op.DECODE:  # a decode's attempts are its own (Task.attempts)
            rec.attempts += 1
            rec.start = time.monotonic()
            self.history.sent(run, task.name, w.id)
            self._started(run, task.name)
