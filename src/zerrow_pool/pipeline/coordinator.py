"""The coordinator: one event loop that runs DAGs over a pool of warm workers.

The loop does the I/O and nothing else. Each turn it checks for a cancel,
has the dispatcher send what can go, waits on the busy workers' sockets (and
the cancel wake-up) and hands each reply over; what a reply or a start
means for a run is decided by the run's rules, and the loop carries out the
``Effects`` they return (``_apply``: events, releases, steps to start, the
run settled). Each part it uses lives in a file named for its job:

- machinery.py: builds the transport, cache, spiller, memory accounting,
  run directory and workers, and closes them in order;
- run_state.py: each run's state and its transitions (which steps are ready,
  what a completion or a failure releases, skips and starts, when a run is
  finished, what an abort lets go of), as pure functions returning ``Effects``;
- dispatch.py: the queue of tasks waiting for a worker, admitted under the
  memory policy and sent;
- replies.py: a worker's reply turned into a completion, a retry (the one
  retry rule) or a failure;
- memory_policy.py: what stays in memory, what is spilled first, and when a
  task may start under the budget;
- step_history.py: what each step did in its last run (bytes, peak, worker
  slot), to plan its next one;
- source_reads.py: sources read through the decode cache, each row group
  decoded once for every run that waits for it;
- tasks.py: the tasks and the messages that ask a worker to run them;
- workers.py: giving a worker its task, taking its reply, replacing the dead;
- cancellation.py: ``cancel`` from another thread, waking the loop.

``Runtime`` (runtime.py) is the loop's public face, options.py its tunables.
Any number of runs share the loop (``run_many``); independent steps run in
parallel up to the worker count.
"""
from __future__ import annotations

import selectors
import time
from . import run_state
from .budget import BudgetExceeded
from .cancellation import Cancellation, RunCancelled
from .dag import Source
from .dispatch import Dispatcher
from .machinery import Machinery
from .options import RuntimeOptions
from .payloads import open_output
from .replies import Replies
from .report import RunResult
from .states import Event, Op, Status
from .step_history import StepHistory
from .tasks import Task


class Coordinator:
    """The event loop over a ``Machinery`` (machinery.py); ``Runtime`` (runtime.py)
    is its public face. Everything tunable comes in ``options`` (options.py)."""

    def __init__(self, options: RuntimeOptions, on_event=None):
        self.options, self.on_event = options, on_event
        self.machinery = m = Machinery(options, spilled=self._spilled, done=self._complete,
                                       failed=self._fail)
        # The parts the loop drives, under the names callers read too (rt.cache, rt.pool...).
        self.transport, self.cache, self.out_dir = m.transport, m.cache, m.out_dir
        self.pool, self.resources, self.memory, self.sources = m.pool, m.resources, m.memory, m.sources
        self.cancellation = Cancellation()  # cancel() may come from another thread
        self.history = StepHistory(self.transport.estimate_factor)
        self.runs: list = []  # the runs in progress, shared with the dispatcher
        self.dispatcher = Dispatcher(
            pool=m.pool, memory=m.memory, messages=m.messages, resources=m.resources,
            history=self.history, sources=m.sources, runs=self.runs,
            started=lambda run, name: self._emit(Event.START, run, name))
        self.replies = Replies(m.pool, m.transport, m.resources, m.sources,
                               complete=self._complete, fail=self._fail, retry=self._retry,
                               tidy=self._tidy)

    def _run(self, states) -> list:
        """Run ``states`` to the end; their RunResults in order."""
        self.cancellation.arm()
        replaced0 = self.pool.replaced
        self.resources.reset_peaks()  # peaks per run_many call
        for run in states:
            self.runs.append(run)
            for name in run_state.roots(run):
                self._start_step(run, name)
        try:
            self._loop(states)
        except BaseException as e:
            self._abort(states, f"{type(e).__name__}: {e}")
            raise
        results = []
        for run in states:
            run.report.workers_replaced = self.pool.replaced - replaced0
            results.append(RunResult(run.report, self._collect(run)))
        if self.cache:
            self.cache.trim()
        return results

    # ------------------------------------------------------------- event loop
    def _loop(self, states) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.cancellation, selectors.EVENT_READ, None)
        try:
            while not all(run.done for run in states):
                if self.options.check_invariants:
                    for run in states:
                        if not run.done:
                            run_state.check(run)
                if self.cancellation.cancelled:
                    raise RunCancelled("the run was cancelled")
                self.dispatcher.dispatch()
                busy = self.pool.busy()
                if not busy:
                    if self.dispatcher.waiting:
                        continue
                    for run in states:  # nothing can make progress: settle the run
                        self._settle(run, force=True)
                    continue
                for w in busy:
                    sel.register(w.sock, selectors.EVENT_READ, w)
                try:
                    events = sel.select(timeout=1.0)
                finally:
                    for w in busy:
                        sel.unregister(w.sock)
                for key, _ in events:
                    if key.data is not None:
                        self.replies.take(key.data)
        finally:
            sel.close()

    def _emit(self, event: str, run, name, **info):
        if self.on_event:
            self.on_event(dict(event=event, pipeline=run.pipeline.name, node=name,
                               record=run.rec.get(name) if name else None, **info))

    # --------------------------------------------------------------- starting
    def _start_step(self, run, name) -> None:
        given = run_state.start(run, name, time.monotonic())
        if given is not None:
            self._complete(run, name, given, {}, 0)
            return
        step = run.pipeline.by_name[name]
        if isinstance(step, Source):
            self._start_source(run, step)
            return
        self.dispatcher.add([self._step_task(run, name, Op.NODE)])

    def _start_source(self, run, step) -> None:
        """Plans a source's reads; what planning finds wrong (a missing file, a bad
        filter) fails the source, through the decode cache or not."""
        try:
            if self.sources:
                self._emit(Event.START, run, step.name)
                tasks = self.sources.start(run, step)
            else:
                tasks = [self._step_task(run, step.name, Op.READ, files=step.files())]
        except Exception as e:  # noqa: BLE001 - planning errors fail the source
            self._fail(run, step.name, f"{type(e).__name__}: {e}")
            return
        self.dispatcher.add(tasks)

    def _step_task(self, run, name, op, files=None) -> Task:
        """A node's or a read's task, sized by what the step did last time."""
        return Task(run, name, op, files=files, estimate=self.history.estimate(run, name),
                    expected_peak=self.history.expected_peak(run, name))

    def _retry(self, task, error: str) -> None:
        """``task`` failed with ``error`` and may run again (replies.py): queued anew."""
        self._emit(Event.RETRY, task.run, task.name, error=error)
        self.dispatcher.add([task.again()])

    # -------------------------------------------------- applying transitions
    def _complete(self, run, name, payload, timing, peak) -> None:
        before = self.resources.usage()
        self.resources.track(payload)
        try:
            self.memory.hold(payload, self.dispatcher.running_inputs(), self.runs)
        except BudgetExceeded as e:
            self._release([payload])
            self._fail(run, name, f"BudgetExceeded: {e}")
            return
        self.history.completed(run, name, self.resources.usage() - before, peak)
        effects = run_state.complete(run, name, payload, time.monotonic(), timing, peak)
        self._emit(Event.DONE, run, name)
        self._apply(run, effects)

    def _fail(self, run, name, error: str) -> None:
        effects = run_state.fail(run, name, error, time.monotonic())
        self._emit(Event.FAILED, run, name, error=error)
        self._apply(run, effects)

    def _apply(self, run, effects) -> None:
        for name in effects.skipped:
            self._emit(Event.SKIPPED, run, name)
        self._release(effects.release)
        for name in effects.start:
            self._start_step(run, name)
        self._settle(run)

    def _release(self, payloads) -> None:
        for p in payloads:
            self.resources.untrack(p)
            p.close()

    def _spilled(self, run, name, new) -> None:
        self._emit(Event.SPILL, run, name, bytes=new.nbytes)

    def _tidy(self) -> None:
        self.memory.tidy(self.dispatcher.running_inputs(), self.runs)

    def _settle(self, run, force: bool = False) -> None:
        effects = run_state.settle(run, time.monotonic(), force=force)
        if effects is None:
            return
        # Forced skips emit no SKIPPED event: that event says an upstream step failed.
        self._release(effects.release)
        run.report.record_totals(self.resources, self.cache)
        self._emit(Event.FINISHED, run, None, report=run.report)

    # ------------------------------------------------------------ results
    def _collect(self, run) -> dict:
        taken = run_state.take_outputs(run)
        done = run.report.status == Status.DONE
        outputs = {name: open_output(p) for name, p in taken.items()} if done else {}
        self._release(taken.values())
        self.runs.remove(run)
        return outputs

    def _abort(self, states, error: str) -> None:
        """Leave the runtime reusable after the loop ended by an exception
        (``error``): it runs one ``run_many`` at a time, so all queued and
        running work belongs to ``states``. Busy workers are killed (their
        tasks cannot be recalled) and replaced; then each run lets go of what
        it holds (``run_state.abort``)."""
        self.dispatcher.clear()
        self.pool.replace_busy()
        if self.cache:
            self.cache.forget_waiters()
        for run in states:
            self._release(run_state.abort(run, error, time.monotonic()).release)
            if run in self.runs:
                self.runs.remove(run)
