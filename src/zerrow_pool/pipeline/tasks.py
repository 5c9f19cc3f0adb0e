"""What a worker is asked to do: a ``Task``, and the message that asks it.

A task is a node (``Op.NODE``: call its function on its inputs), a whole
Parquet source (``Op.READ``, without the decode cache), or the decode of one
row group's missing columns into decode-cache entries (``Op.DECODE``; it may
serve several runs, see ``DecodeCache.wait``). The message is a request of
protocol.py, pickled by wire.py, the payloads' descriptors travelling beside
it; ``Messages`` adds the memory terms the runtime's options set for each task.
"""
from __future__ import annotations

import os
import warnings

from .protocol import DecodeRequest, NodeRequest, ReadRequest, Request
from .sandbox import Isolation
from .states import Op


class Task:
    """One unit of work of run ``run`` for step ``name``.

    ``estimate``: bytes its output is expected to hold (admission, see
    memory_policy.py); ``expected_peak``: the most a node allocated in its
    last run (0: never ran), a hint for its worker's pool. ``held_at_dispatch``: what the runtime held when it was
    sent. ``pinned``: a node's inputs as sent, kept in memory while it runs.
    Read tasks: the source's ``files``, listed when it started.
    Decode tasks: ``read`` (the row group), its ``columns``, the file's full
    ``schema``, the source's ``filter``, and ``attempts`` failed so far (a
    node's attempts are counted on its record).
    """

    def __init__(self, run, name, op, *, estimate=0, expected_peak=0, files=None, read=None,
                 columns=None, schema=None, filter=None):
        self.run, self.name, self.op, self.files = run, name, op, files
        self.estimate, self.expected_peak = estimate, expected_peak
        self.held_at_dispatch = 0
        self.pinned: list = []
        self.read, self.columns, self.schema, self.filter = read, columns, schema, filter
        self.attempts = 0

    def again(self) -> "Task":
        """The task to queue for another attempt: a decode counts its attempts
        on itself; a node starts afresh (its inputs are pinned when it is sent)."""
        if self.op == Op.DECODE:
            return self
        return Task(self.run, self.name, self.op, estimate=self.estimate,
                    expected_peak=self.expected_peak, files=self.files)

    def describe(self) -> str:
        if self.op == Op.DECODE:
            return f"decode of {os.path.basename(self.read.file.path)} row group {self.read.row_group}"
        return f"node {self.name!r}"

    def message(self, out_dir: str, fds: list, memory_limit=None, **terms) -> Request:
        """The worker's request, with memory ``terms`` (``keep_free``,
        ``mem_cap``); appends the descriptors to send to ``fds``. A node's
        inputs are the payloads in ``pinned``."""
        step = self.run.pipeline.by_name[self.name]
        if self.op == Op.NODE:
            return NodeRequest(name=self.name, out_dir=out_dir, fn=step.ref,
                               inputs=[p.encode(fds) for p in self.pinned],
                               inputs_as=step.inputs_as, memory_limit=memory_limit,
                               sandbox=self.run.sandbox, expected_bytes=self.expected_peak,
                               **terms)
        if self.op == Op.READ:
            return ReadRequest(name=self.name, out_dir=out_dir, files=self.files,
                               columns=step.columns, filter=step.filter, **terms)
        return DecodeRequest(name=self.name, out_dir=out_dir, file=self.read.file.path,
                             row_group=self.read.row_group, columns=self.columns,
                             filter=self.filter, schema=self.schema, **terms)


class Messages:
    """Builds the message that asks a worker to run a task, with the memory
    terms of ``options`` (a ``RuntimeOptions``) and of ``resources`` (a
    ``ResourceManager``):

    - ``memory_limit``: a node's limit (its own, else the runtime's); the
      kernel enforces it in a sandbox's cgroup, else the worker's pool does,
      and the first such node warns (once per runtime);
    - ``keep_free``: without a budget, a node's worker returns freed pages
      at once (cached decodes are kept whole: they may live for the runtime);
    - ``mem_cap``: with ``strict_budget``, the task's share of the budget's
      headroom left when it is sent.
    """

    def __init__(self, options, out_dir: str, resources):
        self.options, self.out_dir, self.resources = options, out_dir, resources
        self._warned_no_cgroup = False

    def build(self, task: Task, worker, running: int) -> tuple:
        """``(request, fds)`` asking ``worker`` to run ``task``, which is sent
        holding ``task.held_at_dispatch``; ``running``: tasks running with it."""
        fds: list = []
        node = task.op == Op.NODE
        limit = self._node_limit(task, worker) if node else None
        cap = (max(1, (self.resources.limit - task.held_at_dispatch) // running)
               if self.options.strict_budget else None)
        request = task.message(self.out_dir, fds, limit, mem_cap=cap,
                               keep_free=self.resources.limit is None and node)
        return request, fds

    def _node_limit(self, task: Task, worker):
        step = task.run.pipeline.by_name[task.name]
        isolation = self.options.isolation
        limit = (step.memory_limit if step.memory_limit is not None
                 else self.options.node_memory_limit)
        if limit and not self._warned_no_cgroup and (
                isolation != Isolation.PROCESS or worker.cgroup_error):
            self._warned_no_cgroup = True
            why = (worker.cgroup_error if isolation == Isolation.PROCESS
                   else 'isolation "none" runs many nodes in one process')
            warnings.warn(f"zerrow: node memory limits are enforced by zerrow's pool, not by the "
                          f"kernel: {why}", RuntimeWarning, stacklevel=1)
        return limit
