"""Worker process: a warm Python + pyarrow that runs tasks until told to stop.

Started once by the coordinator (``python -m zerrow_pool.pipeline.worker FD
TRANSPORT ISOLATION``, with the zerrow preload library in LD_PRELOAD). With
isolation "none" it runs every task itself, reused for every node of every
run; with "process" it is a zygote (``zygote.py``) that forks a fresh
process per task, which runs it with ``execute`` below.  Each task arrives as
one request (protocol.py) on the worker's socket, with the read-only fds of
exactly the inputs it needs; the reply (``Done`` or ``Failed``) carries the
published output (descriptor + fds, or an IPC file path) or the traceback.

Task kinds: ``node`` (call a pipeline function), ``read`` (read a Parquet
source whole) and ``decode`` (decode one row group into per-column shares for
the decode cache).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import resource
import signal
import socket
import sys
import threading
import time

import pyarrow as pa

from .dag import user_traceback
from .frames import NodeOutputError, convert_input, to_table
from .payloads import open_input
from .protocol import Done, Failed, Hello, NodeRequest, Stop
from .specs import PublishedColumns
from .states import Op
from .transports import CopyDirFull, get_transport
from .wire import close_fds, raise_fd_limit, recv_msg, send_msg
from .worker_context import enter_worker, importing

_modules: dict = {}
BATCH_ROWS = 1 << 20  # rows per decoded batch: fewer, larger chunks


def load_function(ref):
    """Find a node's function from its FunctionRef (module name, file, qualname)."""
    mod = None
    if ref.module not in ("__main__", "__mp_main__") and not ref.module.startswith("_zerrow_pipeline_"):
        try:
            with importing(ref.module):
                mod = importlib.import_module(ref.module)
            if ref.file and os.path.abspath(getattr(mod, "__file__", "") or "") != ref.file:
                mod = None
        except ImportError:
            mod = None
    if mod is None:
        if not ref.file:
            raise ImportError(f"cannot locate module {ref.module!r} of node {ref.qualname!r}")
        key = (ref.file, os.stat(ref.file).st_mtime_ns)
        mod = _modules.get(key)
        if mod is None:
            name = "_zerrow_node_module_%d" % len(_modules)
            spec = importlib.util.spec_from_file_location(name, ref.file)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            with importing(ref.file):
                spec.loader.exec_module(mod)
            _modules[key] = mod
    obj = mod
    for part in ref.qualname.split("."):
        obj = getattr(obj, part)
    return getattr(obj, "fn", obj)


_SEND_LOCK = threading.Lock()


class PeakSampler:
    """Samples the default pool's bytes_allocated while a task runs.

    With ``cap``, calls ``on_exceed(peak)`` once the task has allocated more.
    """

    def __init__(self, cap=None, on_exceed=None,
                 interval=float(os.environ.get("ZERROW_PEAK_SAMPLE_S", "0.005"))):
        self.interval = interval
        self.peak = 0
        self.cap, self.on_exceed = cap, on_exceed
        self._stop = threading.Event()

    def __enter__(self):
        self.pool = pa.default_memory_pool()
        self.base = self.pool.bytes_allocated()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self):
        self.peak = max(self.peak, self.pool.bytes_allocated() - self.base)
        if self.cap is not None and self.peak > self.cap and self.on_exceed:
            self.on_exceed(self.peak)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.sample()


def _read_source(task):
    import pyarrow.dataset as ds

    dataset = ds.dataset(task.files, format="parquet")
    return dataset.to_table(columns=task.columns, filter=task.filter, batch_size=BATCH_ROWS)


def _decode_row_group(task):
    import pyarrow.dataset as ds

    from pyarrow.fs import LocalFileSystem

    frag = ds.ParquetFileFormat().make_fragment(task.file, filesystem=LocalFileSystem(),
                                                row_groups=[task.row_group])
    return frag.to_table(schema=task.schema, columns=task.columns, filter=task.filter,
                         batch_size=BATCH_ROWS)


def _nonempty(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A chunked array with at least one chunk (a filter may leave none)."""
    return col if col.num_chunks else pa.chunked_array([pa.array([], col.type)], col.type)


def _compact(table: pa.Table) -> pa.Table:
    """``table`` copied into new buffers of the current pool, one chunk per column."""
    return pa.Table.from_arrays([pa.concat_arrays(col.chunks) if col.num_chunks else
                                 pa.array([], col.type) for col in table.columns],
                                schema=table.schema)


def _compact_if_possible(table: pa.Table) -> pa.Table:
    """``_compact(table)``, or ``table`` itself for types Arrow cannot
    concatenate (e.g. chunks with different dictionaries)."""
    try:
        return _compact(table)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return table


def _nbytes_at_most(table: pa.Table, limit: int) -> bool:
    """``table.nbytes <= limit``, looking at chunks only until the sum exceeds
    ``limit``. ``Table.nbytes`` itself costs ~2 us per chunk: 6 ms for a
    table of 11 columns in 256 chunks, 12-15% of a warm data-movement run's
    nodes when every node asked it."""
    total = 0
    for col in table.itercolumns():
        for i in range(col.num_chunks):
            total += col.chunk(i).nbytes
            if total > limit:
                return False
    return True


def run_task(transport, task, fds, on_exceed=None):
    """Execute one task; returns (reply, fds to send, callbacks after sending)."""
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    timing = {}
    cap = memory_cap(task)
    expected = task.expected_bytes if task.op == Op.NODE else 0
    with transport.scope(expected), PeakSampler(cap and cap[0], on_exceed) as peak:
        if task.op == Op.NODE:
            kinds = task.inputs_as or ["arrow"] * len(task.inputs)
            inputs = [convert_input(open_input(spec, fds), kind)
                      for spec, kind in zip(task.inputs, kinds)]
            timing["input_s"] = time.perf_counter() - t0
            fn = load_function(task.fn)
            t1 = time.perf_counter()
            out = to_table(fn(*inputs), task.name)
            timing["compute_s"] = time.perf_counter() - t1
            del inputs
        elif task.op == Op.READ:
            out = _read_source(task)
        elif task.op == Op.DECODE:
            out = _decode_row_group(task)
        else:
            raise ValueError(f"unknown task {task.op!r}")
        t2 = time.perf_counter()
        keep_free = task.keep_free  # the coordinator's call
        if task.op == Op.DECODE:
            # Cache entries outlive the task, and a shared segment is never
            # allocated from again: published from the decode's own segments,
            # they would take the decode's temporaries (decompressed pages,
            # the unfiltered batch) with them, punched, and every decode would
            # fault all of that in afresh. So the result is copied compactly
            # into segments of their own (one memcpy of the output), and the
            # decode's segments come back to this worker warm, as spares.
            with transport.scope():
                out = _compact(out)
                results = [transport.publish(_nonempty(col), task.out_dir, keep_free)
                           for col in out.columns]
            parts, out_fds, dones = [], [], []
            for s, f, d in results:
                parts.append(dataclasses.replace(s, fds=(len(out_fds), len(f))))
                out_fds.extend(f)
                dones.append(d)
            spec = PublishedColumns(parts, out.num_rows)
        else:
            if _nbytes_at_most(out, transport.small_output_bytes):
                # A small output (an aggregate, a few rows) shared from the
                # node's own segments would freeze them with it: the node's
                # temporaries' warm memory stranded until the readers let go,
                # punched under a budget. Copied (a few KiB) into a segment of
                # its own, it leaves them to come back as warm spares. (Its
                # scope says how little it needs, so that it takes no warm spare.)
                with transport.scope(max(1, out.nbytes)):
                    out = _compact_if_possible(out)
            spec, out_fds, done = transport.publish(out, task.out_dir, keep_free)
            dones = [done]
        timing["publish_s"] = time.perf_counter() - t2
        del out
    timing["total_s"] = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    timing["cpu_user_s"] = ru1.ru_utime - ru0.ru_utime
    timing["cpu_sys_s"] = ru1.ru_stime - ru0.ru_stime
    timing["minor_faults"] = ru1.ru_minflt - ru0.ru_minflt
    return Done(spec, timing, peak.peak), out_fds, dones


def _describe_error(e: BaseException) -> str:
    """What the user sees: our own refusals as one line, their exceptions with
    their own frames only (zerrow's worker frames are noise to them)."""
    if isinstance(e, (NodeOutputError, CopyDirFull)):
        return f"{type(e).__name__}: {e}"
    return user_traceback(e)


def _preload_active() -> bool:
    try:
        import zerrow_pool

        active = zerrow_pool.preload_active
        return bool(active() if callable(active) else active)
    except Exception:  # noqa: BLE001 - copy transport without a zerrow build
        return False


def memory_cap(task):
    """(bytes, why) this task may allocate in the pool before it is stopped, or None.

    ``mem_cap`` is the task's share of a strict budget; ``memory_limit`` a
    node's own limit, checked here only when no cgroup enforces it."""
    caps = []
    if task.mem_cap:
        caps.append((task.mem_cap, "budget"))
    if isinstance(task, NodeRequest) and task.memory_limit and not task.limit_by_kernel:
        caps.append((task.memory_limit, "limit"))
    return min(caps) if caps else None


def _over_cap(sock, task, peak) -> None:
    """The task outgrew its memory allowance: report it, then end this process
    (the only way to stop a C++ kernel mid-flight; the coordinator replaces us)."""
    from .budget import fmt_bytes

    cap, why = memory_cap(task)
    if why == "limit":
        msg = (f"MemoryLimitExceeded: {task.name!r} allocated {fmt_bytes(peak)}, more than its "
               f"memory limit of {fmt_bytes(cap)} (enforced by zerrow's pool: no memory cgroup "
               "here); raise the node's memory_limit or --node-memory-limit")
        kind = "MemoryLimitExceeded"
    else:
        msg = (f"BudgetExceeded: {task.name!r} allocated {fmt_bytes(peak)} in its worker, more "
               f"than its allowance of {fmt_bytes(cap)} (its share of the memory budget "
               "left when it started); raise --memory-budget or use fewer workers")
        kind = "BudgetExceeded"
    with _SEND_LOCK:
        try:
            send_msg(sock, Failed(msg, kind, exiting=True))
        finally:
            os._exit(3)


def execute(sock, transport, task, fds):
    """Run one task and describe its outcome: (reply, fds to send, callbacks
    to run once sent). Closes ``fds``. Over its memory cap, the task reports
    on ``sock`` and this process ends."""
    try:
        return run_task(transport, task, fds, lambda peak: _over_cap(sock, task, peak))
    except BaseException as e:  # noqa: BLE001 - report everything to the coordinator
        return Failed(_describe_error(e), type(e).__name__), [], []
    finally:
        close_fds(fds)


def reply(sock, msg, out_fds, dones) -> None:
    try:
        with _SEND_LOCK:
            send_msg(sock, msg, out_fds)
    finally:
        for d in dones:
            d()


def serve_tasks(sock: socket.socket, transport, max_tasks: int | None = None) -> None:
    """Run the tasks that arrive on ``sock`` one after another, until told to
    stop, the peer goes away, or ``max_tasks`` have run."""
    done = 0
    while max_tasks is None or done < max_tasks:
        try:
            task, fds = recv_msg(sock)
        except (ConnectionError, OSError):
            return
        if isinstance(task, Stop):
            close_fds(fds)
            return
        reply(sock, *execute(sock, transport, task, fds))
        done += 1


def serve(sock: socket.socket, transport_name: str) -> None:
    """Isolation "none": run every task in this process."""
    # Ctrl-C reaches the whole process group: the coordinator decides what
    # stops; a worker exits when its socket closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    transport = get_transport(transport_name)
    send_msg(sock, Hello(os.getpid(), _preload_active()))
    serve_tasks(sock, transport)


def die_with_parent(parent_pid: int, sock: socket.socket, use_pdeathsig: bool) -> None:
    """End this worker the moment its coordinator is gone, even mid-task.

    ``PR_SET_PDEATHSIG`` makes the kernel SIGKILL us when the thread that
    started us exits (so the coordinator asks for it only when that thread is
    its main thread); checking ``getppid()`` afterwards closes the race of a
    parent that died before the call.  A watchdog thread also waits for the
    coordinator's end of our socket to close (any death, SIGKILL included),
    which covers workers started from other threads.
    """
    from .sandbox import kill_me_with_parent

    if use_pdeathsig:
        try:
            kill_me_with_parent(parent_pid)
        except OSError:
            pass  # not Linux: the watchdog alone
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_peer, args=(sock.fileno(),), daemon=True,
                     name="zerrow-parent-watch").start()


def _watch_peer(fd: int) -> None:
    import select

    poller = select.poll()
    # Only hang-up events: the main loop reads the data.
    poller.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    while True:
        for _, ev in poller.poll():
            if ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                os._exit(1)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    fd, transport_name, isolation = int(argv[0]), argv[1], argv[2]
    sock = socket.socket(fileno=fd)
    enter_worker()
    from . import sandbox, zygote

    sandbox.make_undumpable()
    if len(argv) > 3:
        die_with_parent(int(argv[3]), sock, argv[4] == "1")
    try:
        if isolation == sandbox.Isolation.PROCESS:
            zygote.serve(sock, transport_name)
        else:
            serve(sock, transport_name)
    finally:
        sock.close()
    # Told to stop (or the coordinator is gone): nothing here is worth an orderly
    # interpreter teardown, which takes a second or more after a big run; the
    # kernel frees the memory either way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
