"""The coordinator: schedules DAG runs over a pool of warm workers.

One event loop drives any number of concurrent runs.  A step becomes ready
when all its inputs are done; ready tasks are dispatched to idle workers (so
independent steps run in parallel up to the worker count).  The coordinator
holds every output as a payload (fds or a file, never mapped) until its last
consumer has finished, then drops it, so memory is released as the DAG
advances.  Sources go through the decode cache when the transport supports it.
"""
from __future__ import annotations

import os
import selectors
import shutil
import socket
import threading
import time
import warnings
import weakref
from collections import deque

from . import rundirs
from .budget import BudgetExceeded, ResourceManager, fmt_bytes, parse_budget, parse_size
from .dag import Pipeline, Source
from .decode_cache import DecodeCache
from .payloads import ColumnsPayload, open_input
from .report import EdgeRecord, NodeRecord, RunReport, RunResult, raise_first_failure
from .sandbox import Isolation, make_undumpable, parse_isolation
from .spill import Spiller
from .states import FINISHED, Event, Op, Status
from .transports import get_transport
from .wire import PeerClosed, close_fds, raise_fd_limit
from .workers import WorkerPool


def may_retry(failures: int, retries: int) -> bool:
    """The one retry rule: a task that failed ``failures`` times runs again
    while that is at most its step's ``retries``."""
    return failures <= retries


class RunCancelled(RuntimeError):
    """``Runtime.cancel()`` was called while a run was in progress."""


class Task:
    """A unit of work for one worker."""

    def __init__(self, run, name, op, *, estimate=0, read=None, columns=None, schema=None,
                 filter=None):
        self.run, self.name, self.op = run, name, op
        self.estimate = estimate
        self.held_at_dispatch = 0
        # decode tasks: a row group, its columns, the file's schema, the source's filter
        self.read, self.columns, self.schema, self.filter = read, columns, schema, filter
        self.pinned: list = []
        self.attempts = 0  # decode tasks: failed attempts so far

    def describe(self) -> str:
        if self.op == Op.DECODE:
            return f"decode of {os.path.basename(self.read.file.path)} row group {self.read.row_group}"
        return f"node {self.name!r}"


class SourceAssembly:
    """A cached source waiting for its column chunks."""

    def __init__(self, run, source, schema, reads):
        self.run, self.source, self.schema, self.reads = run, source, schema, reads
        self.slots = {}  # (read index, column) -> entry
        self.missing = 0
        self.rows = {}

    def total_slots(self):
        return len(self.reads) * len(self.schema)


class RunState:
    def __init__(self, pipeline: Pipeline, outputs, report: RunReport, given=None):
        self.pipeline = pipeline
        self.sandbox = pipeline.code_identity  # see zygote.py
        # Steps produced elsewhere (by another machine, on Ray): their payloads, handed in.
        self.given = dict(given or {})
        self.report = report
        self.rec = {s.name: NodeRecord(s.name, s.kind) for s in pipeline.order}
        report.nodes = list(self.rec.values())
        self.remaining = {n: len(c) for n, c in pipeline.consumers.items()}
        self.payloads: dict = {}
        self.keep = set(pipeline.sinks if outputs is None else outputs)
        unknown = self.keep - set(pipeline.by_name)
        if unknown:
            raise KeyError(f"outputs {sorted(unknown)} are not steps of pipeline {pipeline.name!r}")
        self.edges: dict = {}
        self.t0 = time.monotonic()
        self.done = False

    def status(self, name):
        return self.rec[name].status


class Runtime:
    """Warm workers + coordinator.  Use as a context manager::

        with Runtime(workers=2, transport="zerrow", memory_budget="4G") as rt:
            result = rt.run(pipeline)
            print(result.report.format())

    ``Runtime(ray="auto" | "local" | ADDRESS, ...)`` runs the same pipelines on a
    Ray cluster instead (zerrow_pool.ray; docs/DISTRIBUTED.md).
    """

    def __init__(self, workers: int | None = None, transport: str = "zerrow", *,
                 memory_budget=None, cache: bool = True, spill_dir: str | None = None,
                 preload: bool = True, on_event=None, tolerance: float = 0.10,
                 strict_budget: bool = False, cache_bytes=None, isolation: str = "process",
                 node_memory_limit=None, ray=None):
        raise_fd_limit()
        self.isolation = parse_isolation(isolation)
        self.node_memory_limit = (None if node_memory_limit is None
                                  else parse_size(node_memory_limit))
        # Nodes must not read this process's descriptors (the decode cache,
        # every intermediate) through /proc, nor its memory: see sandbox.py.
        make_undumpable()
        self._warned_no_cgroup = False
        self.transport = get_transport(transport, preload=preload)
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.n_workers = workers or max(1, os.cpu_count() or 1)
        self.budget = parse_budget(memory_budget) if memory_budget is not None else None
        self.cache_enabled = bool(cache) and self.transport.uses_cache
        # cache_bytes bounds what cached decodes keep between runs (default: a
        # quarter of the machine's memory, or ZERROW_CACHE_BYTES).
        self.cache = (DecodeCache(self._entry_freed,
                                  max_entry_bytes=self.budget // 2 if self.budget else None,
                                  max_bytes=_cache_bound(cache_bytes))
                      if self.cache_enabled else None)
        self.spiller = Spiller(spill_dir)
        self.resources = ResourceManager(self.budget, self.cache, self.spiller, tolerance)
        # The copy transport's files: a private run directory (RAM by default).
        self.out_dir = rundirs.make_run_dir(rundirs.copy_base())
        self.on_event = on_event
        # strict_budget: a worker whose task allocates more than its share of
        # the budget's headroom is stopped and the node fails (BudgetExceeded).
        # Allocations are sampled every few ms: a spike shorter than that can
        # slip through.
        self.strict_budget = bool(strict_budget) and self.budget is not None
        self.queue: deque = deque()
        self.estimates: dict = {}
        self.runs: list = []
        self.closed = False
        # cancel() may come from another thread: a flag, and a socket that wakes the loop.
        self._cancelled = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        # Files left behind if close() is never called (workers exit on their
        # own when this process goes: their sockets close).
        self._finalizer = weakref.finalize(self, _remove_dirs, self.out_dir, self.spiller)
        try:
            self.pool = WorkerPool(self.n_workers, self.transport, self.isolation)
        except BaseException:
            self._finalizer()
            raise
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, self.pool, self.out_dir, self.spiller)

    def __new__(cls, *args, ray=None, **kwargs):
        # Runtime(ray=ADDRESS): the same API, with the DAG spread over a Ray cluster.
        if ray is not None:
            from ..ray import connect

            return connect(ray, *args, **kwargs)
        return super().__new__(cls)

    # ------------------------------------------------------------------ public
    def run(self, pipeline: Pipeline, *, outputs=None, raise_on_error: bool = True) -> RunResult:
        """Run one pipeline; returns its RunResult (sink tables by default)."""
        return self.run_many([pipeline], outputs=outputs, raise_on_error=raise_on_error)[0]

    def run_many(self, pipelines, *, outputs=None, raise_on_error: bool = True) -> list:
        """Run several pipelines concurrently; they share workers and the decode cache."""
        return self.run_states([self.new_state(p, outputs) for p in pipelines], raise_on_error)

    def new_state(self, pipeline: Pipeline, outputs=None, given=None) -> RunState:
        """A run of ``pipeline`` to pass to ``run_states``; ``given`` maps steps produced
        elsewhere to their payloads, which the run takes over."""
        rep = RunReport(pipeline.name, self.transport.name, self.n_workers, self.cache_enabled,
                        budget=self.budget)
        return RunState(pipeline, outputs, rep, given)

    def run_states(self, states, raise_on_error: bool = True) -> list:
        """Run prepared ``new_state`` runs concurrently; their RunResults in order."""
        if self.closed:
            raise RuntimeError("runtime is closed")
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
            for s in run.pipeline.order:
                if not s.inputs:
                    self._start_step(run, s)
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
        if raise_on_error:
            raise_first_failure(results)
        return results

    def cancel(self) -> None:
        """Stop the run in progress (callable from any thread): ``run`` raises
        ``RunCancelled`` within a moment, its busy workers are killed and
        replaced, and the runtime stays usable."""
        self._cancelled.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake_r.close()
        self._wake_w.close()
        if self.cache:
            self.cache.clear()
        for p in list(self.resources.live.values()):
            p.close()
        self._finalizer()  # stops the workers, removes the directories

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------- event loop
    def _loop(self, states) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not all(run.done for run in states):
                if self._cancelled.is_set():
                    raise RunCancelled("the run was cancelled")
                self._dispatch()
                busy = self.pool.busy()
                if not busy:
                    if self.queue:
                        continue
                    for run in states:  # nothing can make progress: settle the run
                        self._check_finished(run, force=True)
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
    def _start_step(self, run, step) -> None:
        rec = run.rec[step.name]
        rec.status = Status.RUNNING
        rec.start = time.monotonic()  # re-set when a worker takes the task
        if step.name in run.given:
            self._complete(run, step.name, run.given.pop(step.name), {}, 0)
            return
        if isinstance(step, Source) and self.cache_enabled:
            try:
                self._start_cached_source(run, step)
            except Exception as e:  # noqa: BLE001 - planning errors fail the source
                self._fail(run, step.name, f"{type(e).__name__}: {e}")
            return
        op = Op.READ if isinstance(step, Source) else Op.NODE
        est = self.estimates.get((run.pipeline.name, step.name))
        if est is None:  # first run of this step: guess from its inputs
            est = int(self.transport.estimate_factor
                      * sum(run.payloads[u].nbytes for u in step.inputs if u in run.payloads))
        self.queue.append(Task(run, step.name, op, estimate=est))

    def _start_cached_source(self, run, src) -> None:
        self._emit(Event.START, run, src.name)
        schema, full_schema, reads = self.cache.plan(src)
        assembly = SourceAssembly(run, src, schema, reads)
        todo = {}
        for i, read in enumerate(reads):
            for col in schema.names:
                key = self.cache.key(read, col)
                entry = self.cache.get(key)
                if entry is not None:
                    assembly.slots[(i, col)] = entry
                    run.rec[src.name].cache_hits += 1
                    continue
                run.rec[src.name].cache_misses += 1
                assembly.missing += 1
                if self.cache.wait(key, self._slot_filler(assembly, i, col)):
                    todo.setdefault(i, []).append(col)
        for i, cols in todo.items():
            self.queue.append(Task(run, src.name, Op.DECODE, read=reads[i], columns=cols,
                                   schema=full_schema, filter=src.filter))
        if not assembly.missing:
            self._finish_source(assembly)

    def _slot_filler(self, assembly, i, col):
        def fill(entry, error=None):
            if assembly.run.status(assembly.source.name) != Status.RUNNING:
                return  # the source already failed
            if error is not None:
                self._release_assembly(assembly)
                self._fail(assembly.run, assembly.source.name, error)
                return
            assembly.slots[(i, col)] = entry.acquire()
            assembly.missing -= 1
            if not assembly.missing:
                self._finish_source(assembly)
        return fill

    def _release_assembly(self, assembly):
        for e in assembly.slots.values():
            e.release()
        assembly.slots = {}

    def _finish_source(self, assembly) -> None:
        cols = [[assembly.slots[(i, c)] for i in range(len(assembly.reads))] for c in assembly.schema.names]
        rows = sum(assembly.slots[(i, assembly.schema.names[0])].payload.rows
                   for i in range(len(assembly.reads))) if assembly.schema.names else 0
        assembly.slots = {}
        payload = ColumnsPayload(assembly.schema, cols, rows)
        rec = assembly.run.rec[assembly.source.name]
        self._complete(assembly.run, assembly.source.name, payload, rec.timing, rec.peak)

    # ------------------------------------------------------------ dispatching
    def _dispatch(self) -> None:
        deferred = deque()
        while self.queue and self.pool.idle():
            task = self.queue.popleft()
            if not self._still_wanted(task):
                continue
            if not self._admit(task):
                deferred.append(task)
                continue
            self._send(self.pool.idle()[0], task)
        self.queue.extendleft(reversed(deferred))

    def _still_wanted(self, task) -> bool:
        if task.op == Op.DECODE:  # may serve waiters of several runs
            return any(self.cache.awaited(self.cache.key(task.read, c)) for c in task.columns)
        return task.run.status(task.name) == Status.RUNNING

    def _pinned(self):
        out = []
        for w in self.pool.busy():
            out += w.task.pinned
        for run in self.runs:
            out += [run.payloads[n] for n in run.keep if n in run.payloads]
        return out

    def _spillable(self):
        """Cold intermediates, least recently produced first."""
        out = []
        for run in self.runs:
            for name, p in run.payloads.items():
                if not p.spilled and not p.closed:
                    out.append((p.produced, p, self._replacer(run, name)))
        out.sort(key=lambda t: t[0])
        return [(p, r) for _, p, r in out]

    def _replacer(self, run, name):
        def replace(new):
            run.payloads[name] = new
            run.rec[name].spilled = True
            run.report.spills += 1
            run.report.spilled_bytes += new.size
            self._emit(Event.SPILL, run, name, bytes=new.nbytes)
        return replace

    def _admit(self, task) -> bool:
        if self.budget is None:
            return True
        # The task's own inputs may be spilled too (last resort): the worker
        # then memory-maps them from disk instead of shared memory.
        spillable = self._spillable()
        if task.op == Op.NODE:
            own = {id(task.run.payloads[u]) for u in task.run.pipeline.by_name[task.name].inputs}
            spillable.sort(key=lambda pr: id(pr[0]) in own)
        fits = self.resources.make_room(task.estimate, self._pinned(), spillable, strict=False)
        return fits or not self.pool.busy()

    def _send(self, w, task) -> None:
        run = task.run
        fds: list = []
        msg = {"op": task.op, "name": task.name, "out_dir": self.out_dir}
        if task.op == Op.NODE:
            step = run.pipeline.by_name[task.name]
            upstream = [run.payloads[u] for u in step.inputs]
            task.pinned = upstream
            msg.update(fn=step.ref, inputs=[p.encode(fds) for p in upstream], inputs_as=step.inputs_as,
                       memory_limit=self._memory_limit(w, step), sandbox=run.sandbox)
            for u, p in zip(step.inputs, upstream):
                zero_copy = 0 if p.spilled else min(p.nbytes, p.stats.get("bytes_zero_copy", 0))
                run.edges[(u, task.name)] = EdgeRecord(u, task.name, p.nbytes, zero_copy,
                                                      p.nbytes if p.spilled else p.stats.get("copied", 0))
            run.rec[task.name].attempts += 1
        elif task.op == Op.READ:
            src = run.pipeline.by_name[task.name]
            msg.update(files=src.files(), columns=src.columns, filter=src.filter)
            run.rec[task.name].attempts += 1
        else:
            msg.update(file=task.read.file.path, row_group=task.read.row_group,
                       columns=task.columns, filter=task.filter, schema=task.schema)
        rec = run.rec[task.name]
        if task.op != Op.DECODE:
            rec.start = time.monotonic()
            self._emit(Event.START, run, task.name)
        rec.worker_pid = w.pid
        task.held_at_dispatch = self.resources.usage()
        # Intermediates live until their consumers finish; cached decodes may
        # live for the runtime's life and must not pin more than their pages.
        msg["keep_free"] = self.resources.limit is None and task.op == Op.NODE
        if self.strict_budget:
            running = len(self.pool.busy()) + 1
            msg["mem_cap"] = max(1, (self.resources.limit - task.held_at_dispatch) // running)
        w.task = task
        try:
            w.send(msg, fds)
        except OSError:  # the worker died while idle: replace it and try again
            w.task = None
            self.pool.replace(w)
            if task.op != Op.DECODE:
                rec.attempts -= 1
            self.queue.appendleft(task)

    def _memory_limit(self, w, step):
        limit = step.memory_limit if step.memory_limit is not None else self.node_memory_limit
        if limit and not self._warned_no_cgroup and (
                self.isolation != Isolation.PROCESS or w.cgroup_error):
            self._warned_no_cgroup = True
            why = (w.cgroup_error if self.isolation == Isolation.PROCESS
                   else 'isolation "none" runs many nodes in one process')
            warnings.warn(f"zerrow: node memory limits are enforced by zerrow's pool, not by the "
                          f"kernel: {why}", RuntimeWarning, stacklevel=1)
        return limit

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
                                    f"{task.describe()}", died=True)
            return
        w.task = None
        self.resources.note_worker_peak(task.held_at_dispatch, reply.get("peak", 0))
        if reply.get("exiting"):  # the worker ends itself after this reply
            w.exit_status()
            self.pool.replace(w)
        if not reply["ok"]:
            close_fds(fds)
            self._task_failed(task, reply["error"])
            return
        if task.op == Op.DECODE:
            self._on_decoded(task, reply, fds)
            return
        run = task.run
        if run.status(task.name) != Status.RUNNING:
            close_fds(fds)
            return
        payload = self.transport.payload(reply["result"], fds)
        self._complete(run, task.name, payload, reply.get("timing", {}), reply.get("peak", 0))

    def _on_decoded(self, task, reply, fds) -> None:
        rec = task.run.rec[task.name]  # decode work counts for its source
        rec.peak = max(rec.peak, reply.get("peak", 0))
        timing = rec.timing
        for k, v in reply["timing"].items():
            timing[k] = timing.get(k, 0) + v
        res = reply["result"]
        total = sum(p.nbytes for p in res.parts) or 1
        secs = reply["timing"].get("total_s", 0.0)
        for col, part in zip(task.columns, res.parts):
            start, n = part.fds
            payload = self.transport.payload(part, fds[start:start + n])
            self.resources.track(payload, cached=True)
            entry = self.cache.add(self.cache.key(task.read, col), payload,
                                   secs * part.nbytes / total)
            self.cache.resolve(entry.key, entry)
        self.resources.make_room(0, self._pinned(), self._spillable(), strict=False)

    def _task_failed(self, task, error: str, died: bool = False) -> None:
        run = task.run
        step = run.pipeline.by_name[task.name]  # a source's retries cover its decodes
        if task.op == Op.DECODE:
            task.attempts += 1
            failures = task.attempts
        elif run.status(task.name) != Status.RUNNING:
            return
        else:
            failures = run.rec[task.name].attempts
        if may_retry(failures, step.retries):
            self._emit(Event.RETRY, run, task.name, error=error)
            self.queue.append(task if task.op == Op.DECODE
                              else Task(run, task.name, task.op, estimate=task.estimate))
        elif task.op == Op.DECODE:
            for col in task.columns:
                self.cache.fail(self.cache.key(task.read, col), error)
        else:
            self._fail(run, task.name, error)

    # ------------------------------------------------------- state transitions
    def _complete(self, run, name, payload, timing, peak) -> None:
        rec = run.rec[name]
        before = self.resources.usage()
        payload.produced = time.monotonic()
        self.resources.track(payload)
        run.payloads[name] = payload
        try:  # the new output itself had to exist in memory: it is pinned here
            self.resources.make_room(0, self._pinned() + [payload], self._spillable(), strict=True)
        except BudgetExceeded as e:
            run.payloads.pop(name, None)
            self.resources.untrack(payload)
            payload.close()
            self._fail(run, name, f"BudgetExceeded: {e}")
            return
        self.estimates[(run.pipeline.name, name)] = max(0, self.resources.usage() - before)
        rec.end = time.monotonic()
        rec.status = Status.DONE
        rec.rows, rec.bytes, rec.timing, rec.peak = payload.rows, payload.nbytes, timing, peak
        rec.bytes_zero_copy = payload.stats.get("bytes_zero_copy", 0)
        rec.copied = payload.stats.get("copied", 0)
        rec.exposed = payload.stats.get("exposed", 0)
        self._emit(Event.DONE, run, name)
        self._inputs_consumed(run, name)
        if run.remaining[name] == 0 and name not in run.keep:
            self._drop(run, name)
        for c in run.pipeline.consumers[name]:
            if run.status(c) == Status.PENDING and all(run.status(u) == Status.DONE for u in run.pipeline.by_name[c].inputs):
                self._start_step(run, run.pipeline.by_name[c])
        self._check_finished(run)

    def _fail(self, run, name, error: str) -> None:
        rec = run.rec[name]
        rec.status, rec.error, rec.end = Status.FAILED, error, time.monotonic()
        if run.report.error is None:
            first = error.strip().splitlines()[-1] if error.strip() else error
            run.report.error = f"node {name!r} of pipeline {run.pipeline.name!r} failed: {first}"
        self._emit(Event.FAILED, run, name, error=error)
        self._inputs_consumed(run, name)
        todo = list(run.pipeline.consumers[name])
        while todo:
            c = todo.pop()
            if run.status(c) in FINISHED or run.status(c) == Status.RUNNING:
                continue
            run.rec[c].status = Status.SKIPPED
            self._emit(Event.SKIPPED, run, c)
            self._inputs_consumed(run, c)
            todo += run.pipeline.consumers[c]
        self._check_finished(run)

    def _inputs_consumed(self, run, name) -> None:
        for up in dict.fromkeys(run.pipeline.by_name[name].inputs):
            run.remaining[up] -= 1
            if run.remaining[up] == 0 and up not in run.keep:
                self._drop(run, up)

    def _drop(self, run, name) -> None:
        p = run.payloads.pop(name, None)
        if p is not None:
            self.resources.untrack(p)
            p.close()

    def _check_finished(self, run, force: bool = False) -> None:
        if run.done:
            return
        pending = [n for n, r in run.rec.items() if r.status not in FINISHED]
        if pending and not force:
            return
        for n in pending:  # only reachable with force: nothing can run them
            run.rec[n].status = Status.SKIPPED
        run.done = True
        rep = run.report
        rep.wall_s = time.monotonic() - run.t0
        failed = [n for n, r in run.rec.items() if r.status == Status.FAILED]
        rep.status = Status.FAILED if failed else Status.DONE
        rep.edges = list(run.edges.values())
        rep.peak_held = self.resources.peak
        rep.peak_pinned = self.resources.peak_pinned
        rep.peak_with_workers = max(self.resources.peak, self.resources.peak_with_workers)
        if self.cache:
            rep.cache_hits = sum(r.cache_hits for r in run.rec.values())
            rep.cache_misses = sum(r.cache_misses for r in run.rec.values())
            rep.cache_evictions = self.cache.evictions
            rep.decoded_bytes = self.cache.decoded_bytes
        self._emit(Event.FINISHED, run, None, report=rep)

    # ------------------------------------------------------------ results
    def _collect(self, run) -> dict:
        outputs = {}
        for name in list(run.keep):
            p = run.payloads.pop(name, None)
            if p is None:
                continue
            if run.report.status == Status.DONE:
                fds: list = []
                outputs[name] = open_input(p.encode(fds), fds)
            self.resources.untrack(p)
            p.close()
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
            for p in run.given.values():
                p.close()
            for name in list(run.payloads):
                self._drop(run, name)
            if run in self.runs:
                self.runs.remove(run)

    def _entry_freed(self, entry) -> None:
        self.resources.untrack(entry.payload)


def _cache_bound(cache_bytes) -> int:
    if cache_bytes is None:
        cache_bytes = os.environ.get("ZERROW_CACHE_BYTES")
    if cache_bytes is not None:
        return parse_size(cache_bytes)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4


def _shutdown(pool, out_dir, spiller) -> None:
    pool.close()
    _remove_dirs(out_dir, spiller)


def _remove_dirs(out_dir, spiller) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    spiller.cleanup()


def run(pipeline: Pipeline, **kwargs) -> RunResult:
    """One-shot helper: start a Runtime, run ``pipeline``, shut it down.

    Keyword arguments go to ``Runtime`` except ``outputs`` and
    ``raise_on_error``, which go to ``Runtime.run``.
    """
    run_kw = {k: kwargs.pop(k) for k in ("outputs", "raise_on_error") if k in kwargs}
    with Runtime(**kwargs) as rt:
        return rt.run(pipeline, **run_kw)


__all__ = ["Runtime", "run", "BudgetExceeded", "fmt_bytes"]
