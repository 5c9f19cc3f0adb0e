"""What a worker is asked to do: a ``Task``, and the message that asks it.

A task is a node (``Op.NODE``: call its function on its inputs), a whole
Parquet source (``Op.READ``, without the decode cache), or the decode of one
row group's missing columns into decode-cache entries (``Op.DECODE``; it may
serve several runs, see ``DecodeCache.wait``). The message is a plain dict
pickled by wire.py, the payloads' descriptors travelling beside it.
"""
from __future__ import annotations

import os

from .states import Op


class Task:
    """One unit of work of run ``run`` for step ``name``.

    ``estimate``: bytes its output is expected to hold (admission, see
    memory_policy.py). ``held_at_dispatch``: what the runtime held when it was
    sent. ``pinned``: a node's inputs as sent, kept in memory while it runs.
    Decode tasks: ``read`` (the row group), its ``columns``, the file's full
    ``schema``, the source's ``filter``, and ``attempts`` failed so far (a
    node's attempts are counted on its record).
    """

    def __init__(self, run, name, op, *, estimate=0, read=None, columns=None, schema=None,
                 filter=None):
        self.run, self.name, self.op = run, name, op
        self.estimate = estimate
        self.held_at_dispatch = 0
        self.pinned: list = []
        self.read, self.columns, self.schema, self.filter = read, columns, schema, filter
        self.attempts = 0

    def describe(self) -> str:
        if self.op == Op.DECODE:
            return f"decode of {os.path.basename(self.read.file.path)} row group {self.read.row_group}"
        return f"node {self.name!r}"

    def message(self, out_dir: str, fds: list, memory_limit=None) -> dict:
        """The worker's message; appends the descriptors to send to ``fds``.
        A node's inputs are the payloads in ``pinned``."""
        msg = {"op": self.op, "name": self.name, "out_dir": out_dir}
        step = self.run.pipeline.by_name[self.name]
        if self.op == Op.NODE:
            msg.update(fn=step.ref, inputs=[p.encode(fds) for p in self.pinned],
                       inputs_as=step.inputs_as, memory_limit=memory_limit,
                       sandbox=self.run.sandbox)
        elif self.op == Op.READ:
            msg.update(files=step.files(), columns=step.columns, filter=step.filter)
        else:
            msg.update(file=self.read.file.path, row_group=self.read.row_group,
                       columns=self.columns, filter=self.filter, schema=self.schema)
        return msg
