"""The coordinator: one event loop that runs DAGs over a pool of warm workers.

The loop does the I/O and nothing else: it dispatches queued tasks to idle
workers, waits on the busy ones' sockets, turns replies into payloads (fds or
a file, never mapped) and applies what the rules decide:

- run_state.py: each run's state and its transitions (which steps are ready,
  what a completion or a failure releases, skips and starts, when a run is
  finished), returned as ``Effects`` that ``_apply`` carries out;
- memory_policy.py: what stays in memory, what is spilled first, and when a
  task may start under the budget (budget.py measures and frees);
- source_reads.py (over source_assembly.py and decode_cache.py): sources
  read through the decode cache, each row group decoded once for every run
  that waits for it;
- tasks.py: the tasks and the messages that ask a worker to run them, with
  their memory terms.

``Coordinator`` holds the loop; ``Runtime`` (runtime.py) is its public face
and options.py its tunables. Any number of runs share the loop (``run_many``); independent steps run in
parallel up to the worker count.
"""
from __future__ import annotations

import selectors
import shutil
import socket
import threading
import time
import weakref
from collections import deque

from . import run_state, rundirs
from .budget import BudgetExceeded, ResourceManager
from .dag import Source
from .decode_cache import DecodeCache
from .memory_policy import MemoryPolicy
from .options import RuntimeOptions
from .payloads import open_input
from .report import RunResult
from .sandbox import make_undumpable
from .source_reads import SourceReads
from .spill import Spiller
from .states import Event, Op, Status
from .tasks import Messages, Task
from .transports import get_transport
from .wire import PeerClosed, close_fds, raise_fd_limit
from .workers import WorkerPool


class RunCancelled(RuntimeError):
    """``Runtime.cancel()`` was called while a run was in progress."""


class Coordinator:
    """The event loop and the machinery it drives; ``Runtime`` (runtime.py) is its
    public face. Everything tunable comes in ``options`` (options.py)."""

    def __init__(self, options: RuntimeOptions, on_event=None):
        raise_fd_limit()
        self.options = options
        # Nodes must not read this process's descriptors (the decode cache,
        # every intermediate) through /proc, nor its memory: see sandbox.py.
        make_undumpable()
        self.transport = get_transport(options.transport, preload=options.preload)
        budget = options.memory_budget
        # cache_bytes bounds what cached decodes keep between runs.
        self.cache = (DecodeCache(self._entry_freed,
                                  max_entry_bytes=budget // 2 if budget else None,
                                  max_bytes=options.cache_bytes)
                      if options.cache else None)
        self.spiller = Spiller(options.spill_dir)
        self.resources = ResourceManager(budget, self.cache, self.spiller, options.tolerance)
        self.memory = MemoryPolicy(self.resources, self._spilled)
        # The copy transport's files: a private run directory (RAM by default).
        self.out_dir = rundirs.make_run_dir(options.copy_dir)
        self.messages = Messages(options, self.out_dir, self.resources)
        self.sources = (SourceReads(self.cache, self.transport,
                                    lambda p: self.resources.track(p, cached=True),
                                    done=self._complete, failed=self._fail)
                        if self.cache else None)
        self.on_event = on_event
        self.queue: deque = deque()
        # What each step did in its last run, by (pipeline name, step name): its
        # output's bytes (admission), the most it allocated (its pool's hint)
        # and the worker slot it ran in (the next run prefers it: that
        # worker's warm memory is the one sized for the step).
        self.estimates: dict = {}
        self.peaks: dict = {}
        self.slots: dict = {}
        self.runs: list = []
        # cancel() may come from another thread: a flag, and a socket that wakes the loop.
        self._cancelled = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        # Files left behind if close() is never called (workers exit on their
        # own when this process goes: their sockets close).
        self._finalizer = weakref.finalize(self, _remove_dirs, self.out_dir, self.spiller)
        try:
            self.pool = WorkerPool(options.workers, self.transport, options.isolation)
        except BaseException:
            self._finalizer()
            raise
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, self.pool, self.out_dir, self.spiller)

    # The options read most often, under the names callers use.
    @property
    def n_workers(self) -> int:
        return self.options.workers

    @property
    def budget(self) -> int | None:
        return self.options.memory_budget

    @property
    def cache_enabled(self) -> bool:
        return self.options.cache

    def _run(self, states) -> list:
        """Run ``states`` to the end; their RunResults in order."""
        self._cancelled.clear()
        try:
            while self._wake_r.recv(64):
                pass
        except BlockingIOError:
            pass
        replaced0 = self.pool.replaced
        self.resources.reset_peaks()  # peaks per run_many call
        for run in states:
            self.runs.append(run)
            for name in run_state.roots(run):
                self._start_step(run, name)
        try:
            self._loop(states)
        except BaseException:
            self._abort(states)
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
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not all(run.done for run in states):
                if self.options.check_invariants:
                    for run in states:
                        if not run.done:
                            run_state.check(run)
                if self._cancelled.is_set():
                    raise RunCancelled("the run was cancelled")
                self._dispatch()
                busy = self.pool.busy()
                if not busy:
                    if self.queue:
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
                        self._on_reply(key.data)
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
        if isinstance(step, Source) and self.sources:
            self._emit(Event.START, run, name)
            try:
                self.queue.extend(self.sources.start(run, step))
            except Exception as e:  # noqa: BLE001 - planning errors fail the source
                self._fail(run, name, f"{type(e).__name__}: {e}")
            return
        op = Op.READ if isinstance(step, Source) else Op.NODE
        key = (run.pipeline.name, name)
        est = self.estimates.get(key)
        if est is None:  # first run of this step: guess from its inputs
            est = int(self.transport.estimate_factor * run_state.input_bytes(run, name))
        self.queue.append(Task(run, name, op, estimate=est, expected_peak=self.peaks.get(key, 0)))

    # ------------------------------------------------------------ dispatching
    def _dispatch(self) -> None:
        deferred = deque()
        while self.queue and self.pool.idle():
            task = self.queue.popleft()
            if not self._still_wanted(task):
                continue
            own = run_state.inputs(task.run, task.name) if task.op == Op.NODE else []
            if not self.memory.admit(task.estimate, own, self._running_inputs(), self.runs):
                deferred.append(task)
                continue
            last_slot = self.slots.get((task.run.pipeline.name, task.name))
            self._send(self.pool.pick_idle(last_slot), task)
        self.queue.extendleft(reversed(deferred))

    def _still_wanted(self, task) -> bool:
        if task.op == Op.DECODE:  # may serve waiters of several runs
            return self.sources.wanted(task)
        return task.run.status(task.name) == Status.RUNNING

    def _running_inputs(self) -> list:
        """Per running task, the inputs it was sent."""
        return [w.task.pinned for w in self.pool.busy()]

    def _send(self, w, task) -> None:
        run, rec = task.run, task.run.rec[task.name]
        if task.op == Op.NODE:
            task.pinned = run_state.inputs(run, task.name)
            run_state.record_edges(run, task.name, task.pinned)
        task.held_at_dispatch = self.resources.usage()
        msg, fds = self.messages.build(task, w, running=len(self.pool.busy()) + 1)
        if task.op != Op.DECODE:
            rec.attempts += 1
            rec.start = time.monotonic()
            self._emit(Event.START, run, task.name)
        rec.worker_pid = w.pid
        if task.op != Op.DECODE:
            self.slots[(run.pipeline.name, task.name)] = w.id
        w.task = task
        try:
            w.send(msg, fds)
        except OSError:  # the worker died while idle: replace it and try again
            w.task = None
            self.pool.replace(w)
            if task.op != Op.DECODE:
                rec.attempts -= 1
            self.queue.appendleft(task)

    # --------------------------------------------------------------- replies
    def _on_reply(self, w) -> None:
        task = w.task
        try:
            reply, fds = w.receive()
        except (PeerClosed, OSError):
            status = w.exit_status()
            w.task = None
            self.pool.replace(w)
            self._task_failed(task, f"worker pid {w.pid} {status} while running "
                                    f"{task.describe()}")
            return
        w.task = None
        self.resources.note_worker_peak(task.held_at_dispatch, reply.peak)
        if reply.exiting:  # the worker ends itself after this reply
            w.exit_status()
            self.pool.replace(w)
        if not reply.ok:
            close_fds(fds)
            self._task_failed(task, reply.error)
            return
        if task.op == Op.DECODE:
            self.sources.decoded(task, reply, fds)
            self.memory.tidy(self._running_inputs(), self.runs)
            return
        run = task.run
        if run.status(task.name) != Status.RUNNING:
            close_fds(fds)
            return
        payload = self.transport.payload(reply.result, fds)
        self._complete(run, task.name, payload, reply.timing, reply.peak)

    def _task_failed(self, task, error: str) -> None:
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
            self._emit(Event.RETRY, run, name, error=error)
            self.queue.append(task.again())

    # -------------------------------------------------- applying transitions
    def _complete(self, run, name, payload, timing, peak) -> None:
        before = self.resources.usage()
        self.resources.track(payload)
        try:
            self.memory.hold(payload, self._running_inputs(), self.runs)
        except BudgetExceeded as e:
            self._release([payload])
            self._fail(run, name, f"BudgetExceeded: {e}")
            return
        self.estimates[(run.pipeline.name, name)] = max(0, self.resources.usage() - before)
        if peak:
            self.peaks[(run.pipeline.name, name)] = peak
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
        outputs = {}
        if run.report.status == Status.DONE:
            for name, p in taken.items():
                fds: list = []
                outputs[name] = open_input(p.encode(fds), fds)
        self._release(taken.values())
        self.runs.remove(run)
        return outputs

    def _abort(self, states) -> None:
        """Leave the runtime reusable after a run ended by an exception: the
        loop runs one ``run_many`` at a time, so all queued and running work
        belongs to ``states``. Busy workers are killed (their tasks cannot be
        recalled) and replaced."""
        self.queue.clear()
        for w in self.pool.busy():
            w.task = None
            self.pool.replace(w)
        if self.cache:
            self.cache.forget_waiters()
        for run in states:
            self._release(run_state.abandon(run))
            if run in self.runs:
                self.runs.remove(run)

    def _entry_freed(self, entry) -> None:
        self.resources.untrack(entry.payload)


def _shutdown(pool, out_dir, spiller) -> None:
    pool.close()
    _remove_dirs(out_dir, spiller)


def _remove_dirs(out_dir, spiller) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    spiller.cleanup()
