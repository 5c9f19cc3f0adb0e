"""A warm template that forks workers: a worker's start without its imports.

A fresh worker spends ~0.4 s and ~0.5 CPU-s importing (pyarrow, its compute,
dataset and parquet modules, and pandas through pyarrow's pandas shim) before
it takes a task. On a first ``zerrow run`` the service's own imports and its
two workers' imports queue for the same cores. So the service starts one fork
server as it starts, beside its own imports, with the environment the
starting client's workers will have (``worker_launch.worker_env``); every
worker whose environment is exactly that one is then forked from it, ready in
milliseconds, its imported pages shared copy-on-write. A worker of any other
environment (another transport, another client's variables) starts fresh.

The server process runs no user code and no Python thread but its main one
(a fork would copy a lock that another thread held; the native threads that
importing pyarrow starts, jemalloc's and OpenBLAS's, have their own fork
handlers, as for every sandbox a zygote forks): it imports, says ``Ready``
(with its count of Python threads, checked here), and answers one request at
a time over a socketpair:

  Fork(cwd, args) + the worker's socket  -> Forked(pid)   a worker, in ``cwd``
  Reap(pid, block)                       -> Reaped(code)  Popen-style returncode, None if running

It is its workers' parent, so only it can reap them: ``ForkedProcess`` (pid,
poll, wait, kill, as ``subprocess.Popen``) asks it, and holds a pidfd so that
a signal never reaches a recycled pid. It dies with the process that started
it (PR_SET_PDEATHSIG from the main thread, and the end of its socket), and
its workers die with it (their own PR_SET_PDEATHSIG): nothing outlives the
service. If it is gone, workers start fresh as before, and a worker it
forked that is found dead is reported killed by SIGKILL, which is how the
server's death ends them.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass

from .._frame import PeerClosed, close_fds, recv_msg, send_msg
from . import sandbox

START_TIMEOUT_S = 120.0
BOOT = "import pyarrow; from zerrow_pool.pipeline.forkserver import serve; serve()"  # as a worker's
UNKNOWN_CHILD = 255  # Reaped.code of a pid that is not (or no longer) the server's child


@dataclass(frozen=True)
class Ready:
    pid: int
    threads: int


@dataclass(frozen=True)
class Fork:
    cwd: str
    args: tuple  # worker.main's arguments after its socket: (transport, isolation)


@dataclass(frozen=True)
class Forked:
    pid: int


@dataclass(frozen=True)
class Reap:
    pid: int
    block: bool


@dataclass(frozen=True)
class Reaped:
    code: int | None


# ------------------------------------------------------------------ the server process
def serve(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(argv[0]))
    from . import zygote

    if argv[2] == "1":
        sandbox.kill_me_with_parent(int(argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its starter decides when it ends
    zygote.prewarm()
    try:
        send_msg(sock, Ready(os.getpid(), threading.active_count()))
        while True:
            try:
                req, fds = recv_msg(sock)
            except (PeerClosed, OSError):
                break
            if isinstance(req, Fork):
                reply = Forked(_fork_worker(sock, fds[0], req))
            else:
                reply = Reaped(_reap(req.pid, req.block))
            close_fds(fds)
            send_msg(sock, reply)
    except (PeerClosed, OSError):
        pass
    os._exit(0)  # its workers end too (their PR_SET_PDEATHSIG)


def _fork_worker(sock, fd: int, req: Fork) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # the worker
        from . import worker

        sock.close()
        os.chdir(req.cwd)
        worker.main([str(fd), *req.args, str(os.getppid()), "1"])
    except BaseException:  # noqa: BLE001 - say why in the service's log, then end
        traceback.print_exc()
    finally:
        os._exit(1)


def _reap(pid: int, block: bool) -> int | None:
    try:
        got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return UNKNOWN_CHILD
    return os.waitstatus_to_exitcode(status) if got else None


# ------------------------------------------------------------ the starting process
class ForkServer:
    """This process's end of a fork server whose workers get environment ``env``."""

    def __init__(self, env: dict):
        self.env = env
        self.forked = 0
        self.threads = None
        self._ready = None  # None until the server's Ready is read; then whether it is usable
        self._lock = threading.Lock()  # one request and its reply at a time
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pdeathsig = "1" if sandbox.children_may_die_with_this_thread() else "0"
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", BOOT, str(child.fileno()), str(os.getpid()), pdeathsig],
                pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL, cwd="/")
        finally:
            child.close()
        self.sock = parent
        self.pid = self.proc.pid

    def fork(self, fd: int, cwd: str, args) -> "ForkedProcess | None":
        """A worker on socket ``fd`` (not closed here); None when the server cannot fork."""
        reply = self._ask(Fork(cwd, tuple(args)), [fd])
        if not isinstance(reply, Forked):
            return None
        self.forked += 1
        return ForkedProcess(self, reply.pid)

    def reap(self, pid: int, block: bool) -> tuple[bool, int | None]:
        """(whether the server answered, the returncode or None while ``pid`` runs)."""
        reply = self._ask(Reap(pid, block))
        return (True, reply.code) if isinstance(reply, Reaped) else (False, None)

    def close(self) -> None:
        """End the server (and any worker it forked that still runs)."""
        with self._lock:
            self._ready = False
            self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def _ask(self, req, fds=()):
        with self._lock:
            if not self._await_ready():
                return None
            try:
                send_msg(self.sock, req, fds)
                reply, got = recv_msg(self.sock)
            except (PeerClosed, OSError):
                self._ready = False
                return None
            close_fds(got)
            return reply

    def _await_ready(self) -> bool:
        if self._ready is None:
            self.sock.settimeout(START_TIMEOUT_S)
            try:
                msg, fds = recv_msg(self.sock)
                close_fds(fds)
            except (PeerClosed, OSError):
                msg = None
            finally:
                self.sock.settimeout(None)
            self.threads = getattr(msg, "threads", None)
            self._ready = isinstance(msg, Ready) and msg.threads == 1
            if isinstance(msg, Ready) and msg.threads != 1:
                print(f"zerrow: the fork server runs {msg.threads} Python threads after its imports; "
                      "workers start fresh instead", file=sys.stderr, flush=True)
        return self._ready


class ForkedProcess:
    """A worker forked by a ``ForkServer``, answering as ``subprocess.Popen`` does."""

    def __init__(self, server: ForkServer, pid: int):
        self.pid, self.returncode, self._server = pid, None, server
        # Not reaped until we ask the server to, so this pidfd is this worker's.
        self._pidfd = os.pidfd_open(pid)
        self._closer = weakref.finalize(self, os.close, self._pidfd)

    def poll(self) -> int | None:
        if self.returncode is None:
            self._reap(block=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._exited(timeout):
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout)
            self._reap(block=True)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _exited(self, timeout: float | None) -> bool:
        p = select.poll()
        p.register(self._pidfd, select.POLLIN)
        return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def _reap(self, block: bool) -> None:
        answered, code = self._server.reap(self.pid, block)
        if not answered:  # the server is gone, and its death SIGKILLs what it forked
            code = -signal.SIGKILL if self._exited(0 if not block else 5.0) else None
        if code is not None:
            self.returncode = code
            self._closer()


# ------------------------------------------------------------------- this process's
_current: ForkServer | None = None


def start(env: dict) -> ForkServer | None:
    """Start this process's fork server for workers of environment ``env``
    (replacing any earlier one); it is ready when its imports are done.
    None where the kernel has no pidfds (before 5.3): workers start fresh."""
    global _current
    stop()
    if _pidfds():
        _current = ForkServer(env)
    return _current


def _pidfds() -> bool:
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):
        return False
    return True


def current() -> ForkServer | None:
    return _current


def stop() -> None:
    global _current
    server, _current = _current, None
    if server is not None:
        server.close()
