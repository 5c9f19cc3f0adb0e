"""The pool of warm worker processes.

Workers are started once (a fresh interpreter each, like multiprocessing's
spawn, or a fork of the service's warm fork server: ``worker_launch.py``)
and reused for every node of every run: with isolation "process" (the
default) each is a zygote that forks a fresh sandboxed process per task
(``zygote.py``). A worker that dies is reaped and replaced.  A worker dies
with its coordinator, however the coordinator ends (see
``worker.die_with_parent``); closing the pool stops idle workers politely and
kills busy ones at once (their task is abandoned).

The coordinator's loop ``give``s an idle worker its task and ``take_reply``s
from a busy one; a worker found dead either way is replaced (``take_reply``
raises ``WorkerLost``, saying how it died), and ``replace_busy`` kills and
replaces the busy ones when a run is aborted.
"""
from __future__ import annotations

import signal
import socket
import subprocess

from . import worker_launch
from .protocol import Hello, Stop
from .wire import PeerClosed, recv_msg, send_msg

START_TIMEOUT_S = 120.0


class WorkerStartError(RuntimeError):
    """A worker process could not start."""


class WorkerLost(RuntimeError):
    """A busy worker died before replying (the message says how); it was replaced."""


class Worker:
    """One worker process and the coordinator's end of its socket."""

    def __init__(self, wid: int, transport: str, preload: bool, isolation):
        self.id = wid
        self.task = None
        # From its hello (wait_ready): is the preload library active in it, and
        # (zygotes) why no memory cgroup can be made, or None.
        self.preload_active, self.cgroup_error = False, None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = worker_launch.start(child.fileno(), transport, preload, isolation)
        finally:
            child.close()
        self.sock = parent
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        self.sock.settimeout(timeout)
        try:
            msg, fds = recv_msg(self.sock)
        except (PeerClosed, OSError) as e:
            code = self.proc.poll()
            raise WorkerStartError(
                f"worker {self.id} (pid {self.pid}) failed to start ({describe_exit(code)}); "
                "its stderr is above") from e
        finally:
            self.sock.settimeout(None)
        if not isinstance(msg, Hello):
            raise WorkerStartError(f"worker {self.id} sent {msg!r} instead of its hello")
        self.preload_active, self.cgroup_error = msg.preload_active, msg.cgroup_error

    def send(self, task, fds=()) -> None:
        send_msg(self.sock, task, fds)

    def receive(self):
        return recv_msg(self.sock)

    def fileno(self) -> int:
        return self.sock.fileno()

    def exit_status(self, wait: float = 5.0) -> str:
        try:
            code = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return describe_exit(code)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker: politely when idle, SIGKILL when it is running a task."""
        self.request_stop()
        self.wait_stopped(timeout)

    def request_stop(self) -> None:
        if self.task is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc.poll() is None:
            try:
                send_msg(self.sock, Stop())
            except OSError:
                pass

    def wait_stopped(self, timeout: float = 5.0) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def describe_exit(code) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class WorkerPool:
    def __init__(self, n: int, transport: str, preload: bool, isolation):
        if n < 1:
            raise ValueError("need at least one worker")
        self.transport, self.preload, self.isolation = transport, preload, isolation
        self._next = 0
        self.replaced = 0
        started: list[Worker] = []
        try:
            for _ in range(n):
                started.append(self._spawn())
            for w in started:
                w.wait_ready()
        except BaseException:
            for w in started:
                w.stop(1)
            raise
        self.workers: list[Worker] = started

    def _spawn(self) -> Worker:
        w = Worker(self._next, self.transport, self.preload, self.isolation)
        self._next += 1
        return w

    def idle(self) -> list[Worker]:
        return [w for w in self.workers if w.task is None]

    def pick_idle(self, preferred_id: int | None = None) -> Worker:
        """An idle worker: the one with id ``preferred_id`` if it is idle, else
        the first. (A step's previous worker holds warm memory sized for it.)"""
        idle = self.idle()
        return next((w for w in idle if w.id == preferred_id), idle[0])

    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.task is not None]

    def replace(self, dead: Worker) -> Worker:
        """Reap ``dead`` and start a fresh worker in its slot."""
        try:
            dead.sock.close()
        except OSError:
            pass
        if dead.proc.poll() is None:
            dead.proc.kill()
        dead.proc.wait()
        new = self._spawn()
        new.wait_ready()
        self.workers[self.workers.index(dead)] = new
        self.replaced += 1
        return new

    def give(self, w: Worker, task, msg, fds) -> bool:
        """Send idle worker ``w`` the message ``msg`` (with ``fds``) asking it to run
        ``task``; False when ``w`` had died while idle (it is replaced, ``task`` not taken)."""
        w.task = task
        try:
            w.send(msg, fds)
        except OSError:
            w.task = None
            self.replace(w)
            return False
        return True

    def take_reply(self, w: Worker):
        """Busy worker ``w``'s reply and the reply's fds; ``w`` is idle again, or
        replaced when the reply says it ends itself. Raises ``WorkerLost`` when
        ``w`` died instead (it is replaced)."""
        try:
            reply, fds = w.receive()
        except (PeerClosed, OSError):
            status = w.exit_status()
            w.task = None
            self.replace(w)
            raise WorkerLost(f"worker pid {w.pid} {status}") from None
        w.task = None
        if reply.exiting:
            w.exit_status()
            self.replace(w)
        return reply, fds

    def replace_busy(self) -> None:
        """Kill the busy workers (their tasks cannot be recalled) and start fresh
        ones in their slots."""
        for w in self.busy():
            w.task = None
            self.replace(w)

    def close(self) -> None:
        for w in self.workers:  # all at once: each takes a moment to exit
            w.request_stop()
        for w in self.workers:
            w.wait_stopped()
        self.workers = []
