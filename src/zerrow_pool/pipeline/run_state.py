"""One run of a pipeline as plain data, and the rules that move it along.

The coordinator's event loop (``coordinator.py``) talks to workers; everything
it decides about a run is here, as small functions over a ``RunState`` that do
no I/O: they return what the loop must do (steps to start, payloads to
release) and the loop does it. They are tested without processes
(tests/test_run_state.py).

State of a run (``RunState``):

pipeline
    The ``Pipeline`` being run: its steps in topological ``order``,
    ``by_name``, ``consumers`` (step -> the steps that read it).
sandbox
    The pipeline's code identity: its nodes run in sandboxes of that
    identity only (zygote.py).
given
    ``{step: payload}`` for steps produced elsewhere (another machine, on
    Ray), handed in: taken (popped) when the step starts, instead of running it.
report
    The ``RunReport`` being filled in; ``report.nodes`` are the values of ``rec``.
rec
    ``{step: NodeRecord}``; ``rec[step].status`` is where the step is:
    pending -> running -> done | failed, or skipped (an upstream step failed,
    or nothing could run it).
remaining
    ``{step: consumers of its output that have not finished}``. When it
    falls to 0 the output is released, unless the step is in ``keep``.
payloads
    ``{step: payload}``: the outputs held now (never mapped here).
produced
    ``{step: monotonic time its output was held}``: spilling takes the oldest
    first (memory_policy.py).
keep
    The steps whose outputs the run returns (its sinks by default): held
    until the run is collected.
edges
    ``{(upstream, consumer): EdgeRecord}``: what each input cost its consumer.
t0
    Monotonic time the run was made; ``report.wall_s`` is measured from it.
done
    The run is settled (every step finished and the report complete). Its
    ``report.error`` is set (by ``fail`` or ``abort``) exactly when it failed.

Invariants of a run not settled, once the loop has applied a transition's
effects (``check`` verifies them: the tests after every transition, the
coordinator at each turn of its loop when ``ZERROW_DEBUG_INVARIANTS=1``):

- a step is in ``payloads`` (and ``produced``) only if it is done and
  (``remaining[step] > 0`` or it is in ``keep``);
- ``remaining[step]`` is the number of ``consumers[step]`` not finished;
- a pending step has an input that is not done (else it would have started).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .dag import Pipeline
from .report import EdgeRecord, NodeRecord, RunReport
from .states import FINISHED, Status


class RunState:
    """The state of one run; the fields are described in the module docstring."""

    def __init__(self, pipeline: Pipeline, outputs, report: RunReport, given=None):
        self.pipeline = pipeline
        self.sandbox = pipeline.code_identity
        self.given = dict(given or {})
        self.report = report
        self.rec = {s.name: NodeRecord(s.name, s.kind) for s in pipeline.order}
        report.nodes = list(self.rec.values())
        self.remaining = {n: len(c) for n, c in pipeline.consumers.items()}
        self.payloads: dict = {}
        self.produced: dict = {}
        self.keep = set(pipeline.sinks if outputs is None else outputs)
        unknown = self.keep - set(pipeline.by_name)
        if unknown:
            raise KeyError(f"outputs {sorted(unknown)} are not steps of pipeline {pipeline.name!r}")
        self.edges: dict = {}
        self.t0 = time.monotonic()
        self.done = False

    def status(self, name) -> Status:
        return self.rec[name].status


@dataclass
class Effects:
    """What the loop must do after a transition."""

    start: list = field(default_factory=list)  # steps now ready, in pipeline order
    release: list = field(default_factory=list)  # payloads nobody will read: untrack and close
    skipped: list = field(default_factory=list)  # steps skipped: upstream failure, forced, aborted


def may_retry(failures: int, retries: int) -> bool:
    """The one retry rule: a task that failed ``failures`` times runs again
    while that is at most its step's ``retries``."""
    return failures <= retries


# ------------------------------------------------------------------ starting
def roots(run: RunState) -> list:
    """The steps that read nothing: they start with the run."""
    return [s.name for s in run.pipeline.order if not s.inputs]


def start(run: RunState, name: str, now: float):
    """``name`` starts; returns its payload if it was given (it is done at once)."""
    rec = run.rec[name]
    rec.status = Status.RUNNING
    rec.start = now  # re-set when a worker takes the task
    return run.given.pop(name, None)


def input_bytes(run: RunState, name: str) -> int:
    """Logical bytes of the inputs of ``name`` held now."""
    return sum(run.payloads[u].nbytes for u in run.pipeline.by_name[name].inputs
               if u in run.payloads)


def inputs(run: RunState, name: str) -> list:
    """The payloads node ``name`` reads, in parameter order."""
    return [run.payloads[u] for u in run.pipeline.by_name[name].inputs]


def record_edges(run: RunState, name: str, upstream: list) -> None:
    """What each input costs node ``name``: what its producer shared in place or
    copied. A spilled input is read where it lies (a share from its spill files,
    mapped; an IPC file as before): the spill's own copy is counted once, in the
    report's ``spilled_bytes``, not again on every edge that reads it."""
    for u, p in zip(run.pipeline.by_name[name].inputs, upstream):
        zero_copy = min(p.nbytes, p.counters.bytes_zero_copy)
        run.edges[(u, name)] = EdgeRecord(u, name, p.nbytes, zero_copy, p.counters.bytes_copied)


# ----------------------------------------------------------------- finishing
def complete(run: RunState, name: str, payload, now: float, timing: dict, peak: int) -> Effects:
    """``name`` produced ``payload``: hold it, release the inputs nobody else
    reads (and the output itself if nobody reads or keeps it), start the
    consumers whose inputs are all done."""
    rec = run.rec[name]
    rec.end, rec.status = now, Status.DONE
    rec.rows, rec.bytes, rec.timing, rec.peak = payload.rows, payload.nbytes, timing, peak
    rec.bytes_zero_copy = payload.counters.bytes_zero_copy
    rec.bytes_copied, rec.bytes_exposed = payload.counters.bytes_copied, payload.counters.bytes_exposed
    run.payloads[name] = payload
    run.produced[name] = now
    effects = Effects(release=_consume_inputs(run, name))
    if run.remaining[name] == 0 and name not in run.keep:
        effects.release.append(_take(run, name))
    effects.start = [c for c in run.pipeline.consumers[name] if _ready(run, c)]
    return effects


def fail(run: RunState, name: str, error: str, now: float) -> Effects:
    """``name`` failed: record the run's first error, skip every step
    downstream of it that has not started, release what they no longer need."""
    rec = run.rec[name]
    rec.status, rec.error, rec.end = Status.FAILED, error, now
    if run.report.error is None:
        first = error.strip().splitlines()[-1] if error.strip() else error
        run.report.error = f"node {name!r} of pipeline {run.pipeline.name!r} failed: {first}"
    effects = Effects(release=_consume_inputs(run, name))
    todo = list(run.pipeline.consumers[name])
    while todo:
        c = todo.pop()
        if run.status(c) in FINISHED or run.status(c) == Status.RUNNING:
            continue
        run.rec[c].status = Status.SKIPPED
        effects.skipped.append(c)
        effects.release += _consume_inputs(run, c)
        todo += run.pipeline.consumers[c]
    return effects


def spilled(run: RunState, name: str, new) -> None:
    """The output of ``name`` was spilled to disk: ``new`` replaces it."""
    run.payloads[name] = new
    run.rec[name].spilled = True
    run.report.spills += 1
    run.report.spilled_bytes += new.disk_bytes


def settle(run: RunState, now: float, *, force: bool = False) -> Effects | None:
    """Close the run once every step finished; ``force``: nothing can make
    progress any more, so steps not finished are skipped and release their
    inputs, as a failure's skips do. The effects when the run was settled by
    this call (the loop then completes the report's totals), else None."""
    if run.done:
        return None
    pending = [n for n, r in run.rec.items() if r.status not in FINISHED]
    if pending and not force:
        return None
    effects = Effects(skipped=pending)
    for n in pending:
        run.rec[n].status = Status.SKIPPED
        effects.release += _consume_inputs(run, n)
    run.done = True
    report = run.report
    report.wall_s = now - run.t0
    report.status = Status.FAILED if report.error is not None else Status.DONE
    report.edges = list(run.edges.values())
    return effects


def take_outputs(run: RunState) -> dict:
    """The kept outputs, handed over to the caller (who opens or closes them)."""
    return {name: _take(run, name) for name in list(run.keep) if name in run.payloads}


def abort(run: RunState, error: str, now: float) -> Effects:
    """The loop ended by an exception (``error``, e.g. a cancel) and the run will
    not be collected. A run not settled yet is settled as failed with that
    error: its unfinished steps are skipped, as a forced settle skips them.
    Either way every payload it holds, kept outputs included, or was given is
    released: nobody will read it."""
    effects = Effects()
    if not run.done:
        if run.report.error is None:
            run.report.error = f"the run was aborted: {error}"
        effects = settle(run, now, force=True)
    effects.release += list(run.given.values()) + [_take(run, name) for name in list(run.payloads)]
    run.given.clear()
    return effects


def check(run: RunState) -> None:
    """Raise ``AssertionError`` naming the first invariant (module docstring) broken."""
    for name, rec in run.rec.items():
        unfinished = [c for c in run.pipeline.consumers[name] if run.status(c) not in FINISHED]
        assert run.remaining[name] == len(unfinished), \
            f"{name}: remaining {run.remaining[name]}, unfinished consumers {unfinished}"
        if name in run.payloads:
            assert rec.status == Status.DONE and name in run.produced, f"{name}: held, {rec.status}"
            assert unfinished or name in run.keep, f"{name}: held with no reader and not kept"
        if rec.status == Status.PENDING:
            assert not _ready(run, name), f"{name}: pending with every input done"


# ------------------------------------------------------------------ helpers
def _ready(run: RunState, name: str) -> bool:
    return run.status(name) == Status.PENDING and all(
        run.status(u) == Status.DONE for u in run.pipeline.by_name[name].inputs)


def _consume_inputs(run: RunState, name: str) -> list:
    """``name`` finished (done, failed or skipped): it no longer needs its
    inputs; the payloads that nobody else reads or keeps."""
    out = []
    for up in dict.fromkeys(run.pipeline.by_name[name].inputs):
        run.remaining[up] -= 1
        if run.remaining[up] == 0 and up not in run.keep and up in run.payloads:
            out.append(_take(run, up))
    return out


def _take(run: RunState, name: str):
    run.produced.pop(name, None)
    return run.payloads.pop(name)
