"""The service process: runs pipelines for ``zerrow run`` clients in warm runtimes.

State (all owned by :class:`Service`):
  runtimes   RuntimeKey -> Runtime, least recently used first; at most
             MAX_RUNTIMES, the oldest closed beyond that. A key is everything
             that decides how workers start (transport, worker count, budget,
             cache, the client's working directory and environment).
  run lock   one run at a time: a run swaps in its client's environment and
             working directory, which are process-wide. A client that finds the
             lock taken is told it waits.
  clients    open connections; with none for ``idle_s`` seconds the service exits.

A run is cancelled when its client goes away (Ctrl-C, SIGTERM, SIGKILL of
``zerrow run``): a watcher sees the socket close and cancels the runtime,
whose abort kills the busy workers, so nothing of the run keeps running.
User code runs here only when a pipeline file is loaded (module top level);
nodes run in the workers.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass

from .._frame import PeerClosed, close_fds, recv_msg, send_msg
from ..pipeline import forkserver, worker_launch
from . import location, protocol
from .protocol import Op, Reply

MAX_RUNTIMES = 3
DEFAULT_IDLE_S = 600.0


@dataclass(frozen=True)
class RuntimeKey:
    transport: str
    workers: int | None
    memory_budget: object
    cache: bool
    strict_budget: bool
    isolation: str
    node_memory_limit: object
    cwd: str
    env: tuple

    @classmethod
    def of(cls, req: dict) -> "RuntimeKey":
        """The key of a run request; raises TypeError on an unknown option."""
        from ..pipeline.options import RuntimeOptions

        rt = RuntimeOptions.arguments(**req["runtime"])  # the defaults of those left out
        return cls(rt["transport"], rt["workers"], rt["memory_budget"], bool(rt["cache"]),
                   bool(rt["strict_budget"]), rt["isolation"], rt["node_memory_limit"],
                   req["cwd"], tuple(sorted(req["env"].items())))


class Service:
    def __init__(self, directory: str, idle_s: float):
        self.dir = directory
        self.idle_s = idle_s
        self.identity = protocol.identity()
        self.started = time.time()
        self.runs_served = 0
        self._runtimes: OrderedDict = OrderedDict()
        self._run_lock = threading.Lock()
        self._state = threading.Lock()  # clients, last_active, current
        self._clients = 0
        self._last_active = time.monotonic()
        self._current = None  # (description dict, runtime) of the run in progress
        self._stop = threading.Event()

    # ---------------------------------------------------------------- accept loop
    def serve(self, listener: socket.socket) -> None:
        listener.settimeout(0.5)
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, socket.timeout):
                if self._idle_expired():
                    break
                continue
            if _peer_uid(conn) != os.getuid():  # the directory is private; belt and braces
                conn.close()
                continue
            with self._state:
                self._clients += 1
            threading.Thread(target=self._serve_client, args=(conn,), daemon=True).start()

    def request_stop(self) -> None:
        self._stop.set()
        with self._state:
            current = self._current
        if current is not None:
            current[1].cancel()

    def close(self) -> None:
        with self._run_lock:  # a cancelled run finishes its abort first
            for rt in self._runtimes.values():
                rt.close()
            self._runtimes.clear()

    def _idle_expired(self) -> bool:
        with self._state:
            return self._clients == 0 and time.monotonic() - self._last_active > self.idle_s

    # --------------------------------------------------------------- one client
    def _serve_client(self, conn: socket.socket) -> None:
        try:
            req = _recv_request(conn)
            op = req.get("op")
            if op == Op.STOP:
                send_msg(conn, {"ok": True, "pid": os.getpid()})
                self.request_stop()
            elif op == Op.STATUS:
                send_msg(conn, {"ok": True, "status": self.status()})
            elif op == Op.HELLO:
                why = protocol.mismatch(req.get("identity") or {}, self.identity)
                send_msg(conn, {"ok": why is None, "identity": self.identity, "pid": os.getpid(),
                                "message": why})
                if why is None:
                    req = _recv_request(conn)
                    if req.get("op") == Op.RUN:
                        self._run(conn, req)
            else:
                send_msg(conn, {"ok": False, "message": f"unknown request {op!r}"})
        except (PeerClosed, OSError, EOFError):
            pass
        except Exception:  # noqa: BLE001 - a bad request must not end the service
            traceback.print_exc()
        finally:
            conn.close()
            with self._state:
                self._clients -= 1
                self._last_active = time.monotonic()

    def _run(self, conn, req) -> None:
        if not self._run_lock.acquire(blocking=False):
            with self._state:
                running = self._current[0] if self._current else None
            send_msg(conn, {"kind": Reply.WAITING.value, "running": running})
            while not self._run_lock.acquire(timeout=0.5):
                if self._stop.is_set() or _peer_gone(conn):
                    return
        try:
            if self._stop.is_set():
                send_msg(conn, _error("the zerrow service is stopping; run again", 1))
                return
            with _client_context(req["cwd"], req["env"]):
                self._run_locked(conn, req)
        finally:
            with self._state:
                self._current = None
            self._run_lock.release()

    def _run_locked(self, conn, req) -> None:
        from ..pipeline import load_pipeline_file
        from ..pipeline.cancellation import RunCancelled

        try:
            pipe = load_pipeline_file(req["pipeline"])
            rt = self._runtime_for(RuntimeKey.of(req), req["runtime"])
        except BaseException as e:  # noqa: BLE001 - user code at module level, bad options
            send_msg(conn, _error(_describe(e), 2))
            return
        with self._state:
            self._current = ({"pipeline": req["pipeline"], "since": time.time()}, rt)

        def forward(event):
            try:
                send_msg(conn, {"kind": Reply.EVENT.value, "event": event})
            except OSError:
                rt.cancel()

        rt.on_event = forward if req.get("progress", True) else None
        try:
            with _PeerWatcher(conn, rt.cancel):
                result = rt.run(pipe, outputs=req.get("outputs") or (), raise_on_error=False)
        except RunCancelled:
            return
        except Exception as e:  # noqa: BLE001 - a bug of ours: say so; the runtime was reset
            traceback.print_exc()
            send_msg(conn, _error(f"zerrow failed internally ({type(e).__name__}: {e}); the "
                                  f"traceback is in {location.log_path(self.dir)}", 1))
            return
        finally:
            rt.on_event = None
        self.runs_served += 1
        _send_result(conn, result)

    def _runtime_for(self, key: RuntimeKey, options: dict):
        from ..pipeline import Runtime

        rt = self._runtimes.get(key)
        if rt is not None:
            self._runtimes.move_to_end(key)
            return rt
        rt = Runtime(**options)
        self._runtimes[key] = rt
        while len(self._runtimes) > MAX_RUNTIMES:
            _, old = self._runtimes.popitem(last=False)
            old.close()
        return rt

    # ------------------------------------------------------------------ status
    def status(self) -> dict:
        with self._state:
            clients, current = self._clients, self._current
            idle_for = time.monotonic() - self._last_active
        runtimes = []
        for key, rt in list(self._runtimes.items()):
            runtimes.append({"transport": key.transport, "workers": rt.n_workers,
                             "worker_pids": [w.pid for w in rt.pool.workers],
                             "memory_budget": rt.budget, "cache": rt.cache_enabled,
                             "cache_entries": len(rt.cache.entries) if rt.cache else 0,
                             "cache_bytes": rt.cache.nbytes if rt.cache else 0,
                             "cache_disk_bytes": rt.cache.disk_bytes if rt.cache else 0,
                             "held_bytes": rt.resources.usage(), "cwd": key.cwd})
        fs = forkserver.current()
        return {"pid": os.getpid(), "identity": self.identity, "directory": self.dir,
                "fork_server": fs and {"pid": fs.pid, "forked": fs.forked},
                "uptime_s": time.time() - self.started, "idle_s": self.idle_s,
                "idle_for_s": 0.0 if clients else idle_for, "clients": clients,
                "runs_served": self.runs_served,
                "running": current[0] if current else None, "runtimes": runtimes}


# ------------------------------------------------------------------- helpers
def _recv_request(conn) -> dict:
    req, fds = recv_msg(conn)
    close_fds(fds)
    if not isinstance(req, dict):
        raise EOFError("malformed request")
    return req


def _error(message: str, exit_code: int) -> dict:
    return {"kind": Reply.ERROR.value, "message": message, "exit_code": exit_code}


def _describe(e: BaseException) -> str:
    from ..pipeline import PipelineDefinitionError

    if isinstance(e, (PipelineDefinitionError, FileNotFoundError, ValueError)):
        return str(e)
    if isinstance(e, SystemExit):
        return f"the pipeline file called sys.exit({e.code!r}) while loading"
    return f"{type(e).__name__}: {e}"


def _send_result(conn, result) -> None:
    from .. import share

    shares, fds, described = [], [], {}
    try:
        for name, table in result.outputs.items():
            s = share(table)
            shares.append(s)
            described[name] = (s.descriptor, len(s.fds))
            fds += s.fds
        send_msg(conn, {"kind": Reply.RESULT.value, "report": result.report,
                        "outputs": described}, fds)
    finally:
        for s in shares:
            s.close()


@contextlib.contextmanager
def _client_context(cwd: str, env: dict):
    """The client's working directory and environment for the length of a run."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)


def _peer_uid(conn) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _peer_gone(conn) -> bool:
    p = select.poll()
    p.register(conn, select.POLLIN | select.POLLRDHUP)
    for _, ev in p.poll(0):
        if ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
            return True
        if ev & select.POLLIN:
            try:
                return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True
    return False


class _PeerWatcher:
    """Calls ``on_gone`` once the client closes its end while a run is in progress."""

    def __init__(self, conn, on_gone):
        self.conn, self.on_gone = conn, on_gone
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        while not self._done.wait(0.2):
            if _peer_gone(self.conn):
                self.on_gone()
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()


# -------------------------------------------------------------------- process
def _import_for_runs() -> None:
    """Import what the first run needs before taking it, while the fork server imports the
    same on the other core (the dataset module, ~0.3 s with pandas, planned the first run)."""
    import pyarrow  # noqa: F401 - first: it loads the libarrow zerrow links to, as workers do
    import pyarrow.dataset  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from ..pipeline import dag, runtime  # noqa: F401


def _start_fork_server(args: list) -> None:
    """The fork server for the workers of the starting client's run: ``--fork-server
    TRANSPORT PRELOAD`` (PRELOAD 0 or 1). Its environment is the one those workers
    get (the client's, as ``protocol.run_env`` sends it); other runs' workers start fresh."""
    if "--fork-server" not in args:
        return
    at = args.index("--fork-server")
    transport, preload = args[at + 1], args[at + 2] == "1"
    base = protocol.run_env(os.environ)
    forkserver.start(worker_launch.worker_env(transport, preload, base))


def _bind(directory: str) -> tuple[socket.socket, int]:
    """Listen on the service socket; returns the listener and the socket file's inode."""
    path = location.socket_path(directory)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a dead service's socket; the starting client holds the lock
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    return listener, os.stat(path).st_ino


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    directory = location.ensure_private_dir(argv[0])
    if "--daemon" in argv[1:]:
        # The starting client waits for this first process; the service lives on in a
        # grandchild that no terminal, session or parent's wait() is tied to.
        if os.fork():
            os._exit(0)
        os.setsid()
        if os.fork():
            os._exit(0)
    os.chdir("/")
    idle_s = float(os.environ.get("ZERROW_SERVICE_IDLE", DEFAULT_IDLE_S))
    _start_fork_server(argv[1:])  # its imports run beside ours
    _import_for_runs()

    service = Service(directory, idle_s)
    listener, inode = _bind(directory)
    signal.signal(signal.SIGTERM, lambda *_: service.request_stop())
    signal.signal(signal.SIGINT, lambda *_: service.request_stop())
    print(f"zerrow service {service.identity['version']} pid {os.getpid()} listening on "
          f"{location.socket_path(directory)} (idle exit after {idle_s:g}s)", flush=True)
    try:
        service.serve(listener)
    finally:
        path = location.socket_path(directory)
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # not a successor's socket
                os.unlink(path)
        listener.close()
        service.close()
        forkserver.stop()
        print(f"zerrow service pid {os.getpid()} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
