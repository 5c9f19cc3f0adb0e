"""Isolation "process": each worker is a zygote that forks sandboxes.

The zygote is a warm interpreter (pyarrow, its compute/dataset/parquet
modules and zerrow imported, the preload library loaded) that never runs a
task itself: no pipeline's code or data ever lives in it. It hands each task
to a *sandbox*, a process forked from it, which

1. joins the task's memory cgroup, when the node has a memory limit and the
   machine gives cgroups (``cgroups.MemoryCgroups``);
2. puts up the barriers of ``sandbox.enter_invocation``;
3. runs tasks exactly as a warm worker would (``worker.serve_tasks``), with
   each task's input descriptors and nothing else of the coordinator's, and
   replies to the zygote over a private socket.

Which sandbox runs a task (the OpenLambda model: a warm instance per
function, a fresh fork from the zygote for a function without one):

- a node of pipeline P runs in this slot's sandbox for P's code (the set of
  its node functions, ``Pipeline.code_identity``), forked on P's first task
  here and kept warm (its memory too) for P's later tasks and runs; no other
  pipeline's code ever runs in it. At most
  ``ZERROW_WARM_SANDBOXES`` (default 2) are kept per slot, least recently
  used first out;
- decodes and reads run zerrow's code only, in one trusted sandbox per slot;
- a node with a memory limit runs alone in a sandbox forked for it, in a
  cgroup of its own, so that the kernel charges it for exactly what it
  allocates; the sandbox exits after it.

The zygote forwards each reply, or, when a sandbox died without one, says
how it died (the kernel's OOM killer in its cgroup: the node went over its
memory limit). Only the zygote talks to the coordinator, so a dying or
hostile sandbox cannot corrupt the coordinator's stream, and the slot goes on.
"""
from __future__ import annotations

import dataclasses
import gc
import os
import signal
import socket
import time
import warnings
from collections import OrderedDict

from . import sandbox, worker
from .budget import fmt_bytes
from .cgroups import CgroupError, MemoryCgroups
from .protocol import Done, Failed, Hello, NodeRequest, Stop
from .states import Op
from .transports import get_transport
from .wire import PeerClosed, close_fds, raise_fd_limit, recv_msg, send_msg
from .workers import describe_exit

TRUSTED = "\0zerrow"  # the sandbox key of decodes and reads (not a pipeline's)


def prewarm() -> None:
    """Import what tasks use, once, so that sandboxes (and workers forked by a
    fork server, forkserver.py) start with it loaded."""
    import pyarrow.compute  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import pyarrow.ipc  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    gc.collect()
    gc.freeze()  # the collector then leaves the zygote's objects (and their pages) alone


class Sandbox:
    """The zygote's end of one forked sandbox."""

    def __init__(self, pid: int, sock: socket.socket, cgroup, forked: float):
        self.pid, self.sock, self.cgroup = pid, sock, cgroup
        self.forked = forked  # perf_counter() at fork, until its first task starts
        self.exit_code = None
        self.oom_killed = False

    def reap(self, kill: bool = False) -> None:
        if self.exit_code is not None:
            return
        if kill:
            os.kill(self.pid, signal.SIGKILL)
        self.sock.close()
        _, status = os.waitpid(self.pid, 0)
        self.exit_code = os.waitstatus_to_exitcode(status)
        if self.cgroup:
            self.oom_killed = self.cgroup.oom_killed()
            self.cgroup.remove()

    def stop(self) -> None:
        try:
            send_msg(self.sock, Stop())
        except OSError:
            pass
        self.reap()


class Zygote:
    def __init__(self, sock: socket.socket, transport_name: str):
        self.sock = sock
        self.transport = get_transport(transport_name)
        self.warm: OrderedDict[str, Sandbox] = OrderedDict()
        self.max_warm = max(1, int(os.environ.get("ZERROW_WARM_SANDBOXES", "2")))
        self.count = 0
        try:
            self.cgroups, self.cgroup_error = MemoryCgroups(), None
        except CgroupError as e:
            self.cgroups, self.cgroup_error = None, str(e)

    def serve(self) -> None:
        send_msg(self.sock, Hello(os.getpid(), worker._preload_active(), self.cgroup_error))
        try:
            while True:
                try:
                    task, fds = recv_msg(self.sock)
                except (ConnectionError, OSError):
                    return
                if isinstance(task, Stop):
                    close_fds(fds)
                    return
                msg, out_fds = self.handle(task, fds)
                try:
                    send_msg(self.sock, msg, out_fds)
                finally:
                    close_fds(out_fds)
        finally:
            for sb in self.warm.values():
                sb.stop()
            if self.cgroups:
                self.cgroups.close()

    # ------------------------------------------------------------ one task
    def handle(self, task, fds):
        """Run ``task`` in its sandbox; returns (reply, fds). Closes ``fds``."""
        node = isinstance(task, NodeRequest)
        limit = task.memory_limit if node else None
        try:
            if limit:
                (sb, task), key = self._fork_for_limit(task, limit, fds), None
            else:
                key = task.sandbox if node else TRUSTED
                sb = self._warm_sandbox(key, fds)
        except OSError as e:
            close_fds(fds)
            return Failed(f"cannot start a sandbox for {task.name!r}: {e}", type(e).__name__), []
        try:
            send_msg(sb.sock, task, fds)
        except OSError:
            pass  # it died: told below
        finally:
            close_fds(fds)
        try:
            msg, out_fds = recv_msg(sb.sock)
        except (PeerClosed, OSError):
            msg, out_fds = None, []
        if sb.forked is not None:  # fork to this reply: the cold start (p50/p99 in bench/)
            if isinstance(msg, Done):
                msg = dataclasses.replace(msg, timing={
                    **msg.timing, "sandbox_start_s": time.perf_counter() - sb.forked,
                    "forked_at": sb.forked})  # CLOCK_MONOTONIC: comparable across processes
            sb.forked = None
        exiting = msg is not None and msg.exiting
        if exiting:  # the sandbox ends, not this zygote: the coordinator need not know
            msg = dataclasses.replace(msg, exiting=False)
        if msg is None or exiting or key is None:
            if key is not None:
                del self.warm[key]
            sb.reap(kill=msg is None)
        if msg is None:
            msg = self._died(task, sb, limit)
        return msg, out_fds

    def _warm_sandbox(self, key: str, task_fds: list) -> Sandbox:
        sb = self.warm.get(key)
        if sb is not None:
            self.warm.move_to_end(key)
            return sb
        while len(self.warm) >= self.max_warm:
            _, old = self.warm.popitem(last=False)
            old.stop()
        sb = self._fork(None, None, task_fds)
        self.warm[key] = sb
        return sb

    def _fork_for_limit(self, task: NodeRequest, limit, task_fds: list) -> tuple:
        """A sandbox of its own for ``task``, and the request to send it."""
        cg = None
        if self.cgroups:
            self.count += 1
            try:
                cg = self.cgroups.create(f"sandbox-{self.count}", limit)
                task = dataclasses.replace(task, limit_by_kernel=True)
            except OSError as e:  # the pool's allowance stands in (worker.memory_cap)
                warnings.warn(f"zerrow: no memory cgroup for {task.name!r} ({e}); its limit "
                              "is enforced by the pool", RuntimeWarning, stacklevel=1)
        task = dataclasses.replace(task, keep_free=False)  # the sandbox exits after this task
        return self._fork(cg, 1, task_fds), task

    def _fork(self, cgroup, max_tasks, task_fds: list) -> Sandbox:
        """A new sandbox; ``task_fds``: the descriptors of the task it is forked
        for, which the zygote holds until it has passed them on."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        forked = time.perf_counter()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            if cgroup:
                cgroup.remove()
            raise
        if pid == 0:  # the sandbox: never returns
            code = 0
            try:
                ours.close()
                self.sock.close()  # the coordinator's stream is the zygote's alone
                for sb in self.warm.values():
                    sb.sock.close()  # its siblings' streams too
                # The copies of the task's descriptors forked with us: the task
                # brings its own, and these would keep its inputs' segments
                # open for this sandbox's life, so that their producers could
                # never take them back (nor the decode cache free an entry).
                close_fds(task_fds)
                sandbox.kill_me_with_parent(os.getppid())
                if cgroup:
                    cgroup.join()
                sandbox.enter_invocation()
                worker.serve_tasks(theirs, self.transport, max_tasks)
            except BaseException as e:  # noqa: BLE001 - the zygote reports what we say
                code = 1
                try:
                    send_msg(theirs, Failed(f"the sandbox could not be set up: {e}",
                                            type(e).__name__))
                except OSError:
                    pass
            finally:
                os._exit(code)
        theirs.close()
        return Sandbox(pid, ours, cgroup, forked)

    @staticmethod
    def _died(task, sb: Sandbox, limit) -> Failed:
        what = (f"node {task.name!r}" if task.op == Op.NODE
                else f"{task.op} task of {task.name!r}")
        if sb.oom_killed:
            return Failed(f"MemoryLimitExceeded: {what} went over its memory limit of "
                          f"{fmt_bytes(limit)} and the kernel stopped it; raise the node's "
                          "memory_limit (or --node-memory-limit)", "MemoryLimitExceeded")
        return Failed(f"the sandbox running {what} (pid {sb.pid}) {describe_exit(sb.exit_code)}",
                      "SandboxDied")


def serve(sock: socket.socket, transport_name: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides what stops
    raise_fd_limit()
    prewarm()
    Zygote(sock, transport_name).serve()
