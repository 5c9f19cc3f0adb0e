"""The runtime's vocabulary: the kinds of step, the states of a step in a run,
the kinds of task a worker runs, and the events a run reports.

String enums: a status compares equal to its name (``rec.status == "done"``)
and prints and serializes as it (reports, JSON), so code written against the
strings keeps working.
"""
from __future__ import annotations

import enum


class StepKind(enum.StrEnum):
    """What a pipeline step is (dag.py): a function or a Parquet source; on Ray
    also a step produced on another machine and handed in (ray/steps.py)."""

    NODE = "node"
    SOURCE = "source"
    GIVEN = "given"


class Status(enum.StrEnum):
    """Where a node is in a run: pending -> running -> done | failed; skipped
    when an upstream node failed."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


FINISHED = frozenset({Status.DONE, Status.FAILED, Status.SKIPPED})


class Op(enum.StrEnum):
    """What a worker is asked to do."""

    NODE = "node"      # call a pipeline function on its inputs
    READ = "read"      # read a Parquet source whole (no decode cache)
    DECODE = "decode"  # decode one row group into per-column cache entries
    STOP = "stop"      # exit


class Event(enum.StrEnum):
    """What ``Runtime(on_event=...)`` is told about."""

    START = "start"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRY = "retry"
    SPILL = "spill"
    FINISHED = "finished"
