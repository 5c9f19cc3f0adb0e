"""The client side: find (or start) the service, hand it a run, relay what it says."""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import time

from .._frame import PeerClosed, close_fds, recv_msg, send_msg
from . import location, protocol
from .protocol import Op, Reply

START_TIMEOUT_S = 60.0
ANSWER_TIMEOUT_S = 15.0  # a service that does not answer a hello/status/stop in this long is stuck
# or speaks another version's protocol


class ServiceError(RuntimeError):
    """The service could not be reached, started, or it died during a run.

    ``peer_pid``: the pid of a service of this user that did not answer, if any."""

    def __init__(self, message: str, *, peer_pid: int | None = None):
        super().__init__(message)
        self.peer_pid = peer_pid


class ServiceMismatch(ServiceError):
    """A service of another zerrow version, build or Python environment holds the socket."""


class RunRefused(ServiceError):
    """The service could not start the run (bad pipeline file or options)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class ServiceClient:
    """Talks to the zerrow service of this user (``directory``: see ``location``)."""

    def __init__(self, directory: str | None = None):
        self.dir = directory or location.service_dir()
        self.sock_path = location.socket_path(self.dir)

    # ----------------------------------------------------------------- requests
    def run(self, pipeline_path: str, *, runtime: dict, outputs=(), on_event=None,
            on_wait=None):
        """Run the pipeline file in the service (started if needed); returns a RunResult
        whose outputs are attached here, zero-copy."""
        from ..pipeline.report import RunResult

        sock = self._connect_checked(runtime)
        with sock:
            send_msg(sock, {"op": Op.RUN.value, "pipeline": os.path.abspath(pipeline_path),
                            "cwd": os.getcwd(), "env": protocol.run_env(os.environ),
                            "runtime": runtime, "outputs": list(outputs),
                            "progress": on_event is not None})
            while True:
                try:
                    msg, fds = recv_msg(sock)
                except PeerClosed:
                    raise ServiceError(
                        f"the zerrow service stopped during the run; see its log "
                        f"{location.log_path(self.dir)}") from None
                kind = msg.get("kind")
                if kind == Reply.EVENT:
                    if on_event:
                        on_event(msg["event"])
                elif kind == Reply.WAITING:
                    if on_wait:
                        on_wait(msg.get("running"))
                elif kind == Reply.ERROR:
                    close_fds(fds)
                    raise RunRefused(msg["message"], msg.get("exit_code", 2))
                elif kind == Reply.RESULT:
                    return RunResult(msg["report"], _attach_outputs(msg["outputs"], fds))
                else:
                    close_fds(fds)
                    raise ServiceError(f"unexpected message from the service: {kind!r}")

    def status(self) -> dict | None:
        """The running service's status, or None when none runs."""
        reply = self._request(Op.STATUS)
        return None if reply is None else reply.get("status")

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the service (any version); returns its pid, or None when none ran."""
        try:
            reply = self._request(Op.STOP)
        except ServiceError as e:
            if e.peer_pid is None:
                raise
            os.kill(e.peer_pid, signal.SIGTERM)  # one of ours that cannot understand us
            reply = {"pid": e.peer_pid}
        if reply is None:
            return None
        pid = reply.get("pid")
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        return pid

    def _request(self, op: Op) -> dict | None:
        """One request answered before the identity check; None when no service runs."""
        sock = self._connect()
        if sock is None:
            return None
        with sock:
            return self._exchange(sock, {"op": op.value})

    def _exchange(self, sock, msg: dict) -> dict:
        """Send ``msg`` and wait a bounded time for the answer."""
        sock.settimeout(ANSWER_TIMEOUT_S)
        try:
            send_msg(sock, msg)
            reply, fds = recv_msg(sock)
            close_fds(fds)
        except (PeerClosed, OSError) as e:
            pid, uid = _peer(sock)
            raise ServiceError(
                f"the zerrow service at {self.sock_path} (pid {pid}) did not answer ({e}); it may "
                "be another zerrow version's: `zerrow service stop` stops it, or run with "
                "--no-service", peer_pid=pid if uid == os.getuid() else None) from e
        sock.settimeout(None)
        return reply

    # --------------------------------------------------------------- connecting
    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.sock_path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            return None
        except OSError as e:
            sock.close()
            raise ServiceError(f"cannot reach the zerrow service at {self.sock_path}: {e}") from e
        return sock

    def _connect_checked(self, runtime: dict) -> socket.socket:
        """A connection to a service of our identity, starting one for a run with
        ``runtime`` options if none runs."""
        location.ensure_private_dir(self.dir)
        sock = self._connect() or self._start(runtime)
        mine = protocol.identity()
        try:
            reply = self._exchange(sock, {"op": Op.HELLO.value, "identity": mine})
        except ServiceError:
            sock.close()
            raise
        if not reply.get("ok"):
            sock.close()
            raise ServiceMismatch(
                f"a zerrow service of another {reply.get('message')} is running "
                f"(pid {reply.get('pid')}, socket {self.sock_path}); stop it with "
                f"`zerrow service stop`, or run with --no-service")
        return sock

    def _start(self, runtime: dict) -> socket.socket:
        """Start the service, with a fork server for the workers of a run with
        ``runtime`` options; one client at a time does this (the lock), the rest connect."""
        with open(location.lock_path(self.dir), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            sock = self._connect()
            if sock is not None:
                return sock
            log = location.log_path(self.dir)
            with open(log, "ab") as out:
                starter = subprocess.Popen(
                    [sys.executable, "-m", "zerrow_pool.service.server", self.dir, "--daemon",
                     # RuntimeOptions' defaults: a wrong guess costs the fork server's use only
                     "--fork-server", runtime.get("transport", "zerrow"),
                     "1" if runtime.get("preload", True) else "0"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, close_fds=True)
            if starter.wait() != 0:
                raise ServiceError(f"the zerrow service failed to start; see {log}")
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline:
                sock = self._connect()
                if sock is not None:
                    return sock
                time.sleep(0.02)
            raise ServiceError(f"the zerrow service did not start within {START_TIMEOUT_S:.0f}s; "
                               f"see {log}")


def _attach_outputs(described: dict, fds: list) -> dict:
    if not described:
        return {}
    from .. import Share  # the core, and pyarrow, only when --output/--show asked for tables

    outputs, at = {}, 0
    for name, (descriptor, n) in described.items():
        with Share(descriptor, fds[at:at + n]) as s:
            outputs[name] = s.attach(spill_files=True)  # our own service spilled it
        at += n
    return outputs


def _peer(sock) -> tuple:
    """(pid, uid) of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
        return pid, uid
    except OSError:
        return None, None


def _alive(pid) -> bool:
    if not pid:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, 0)
        # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return False
