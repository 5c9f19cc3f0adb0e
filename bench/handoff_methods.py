"""Handing an Arrow table from one process to a persistent other one, by several
methods; used by bench/handoff_run.py and bench/bench_share.py.

Producer side: ``Method(name)`` starts the receiver process (this file run with
``--receiver NAME``); ``m.handoff(table)`` hands one table over and returns
when the receiver has it and has summed one column (``touch=True``) or has only
rebuilt it (``touch=False``: the bare handoff). Every handoff is one round trip
ending in an 8-byte acknowledgement on a control socket.

Methods:
  zerrow       zerrow_pool.send / recv over AF_UNIX (descriptor + SCM_RIGHTS fds)
  ipc_stream   Arrow IPC stream written to an AF_UNIX socket, read_all() on the other side
  ipc_shm_file Arrow IPC file written to /dev/shm, opened with pa.memory_map (zero-copy read)
  pickle       multiprocessing Connection (socket) send/recv, i.e. pickle protocol 5
  shared_mem   multiprocessing.shared_memory block holding an IPC stream, read zero-copy
  ray          ray.put in the producer, an actor gets the ref (object store, zero-copy read)
"""

import os
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

METHODS = ["zerrow", "ipc_stream", "ipc_shm_file", "pickle", "shared_mem", "ray"]
SUM_COLUMN = "f64"
SHM_DIR = "/dev/shm"


# -- tables


def make_table(nbytes, ncols=None):
    """A table of about nbytes: int64, float64, int32, float32 and string columns
    (ncols=None), or ncols numeric columns; every buffer allocated by pyarrow's
    default pool (call inside zerrow_pool.scope() to have it in zerrow memory)."""
    if ncols is None:
        per_row = 8 + 8 + 4 + 4 + 4 + 12  # the strings are 8-12 characters
        rows = max(1, nbytes // per_row)
        base = pa.array(np.arange(rows, dtype=np.int64))
        return pa.table({
            "i64": pc.multiply(base, 3),
            "f64": pc.divide(pc.cast(base, pa.float64()), 7.0),
            "i32": pc.cast(pc.bit_wise_and(base, 0x7FFFFFFF), pa.int32()),
            "f32": pc.cast(pc.divide(pc.cast(base, pa.float64()), 3.0), pa.float32()),
            "str": pc.binary_join_element_wise("id-", pc.cast(pc.add(base, 10_000_000), pa.string()), ""),
        })
    rows = max(1, nbytes // (8 * ncols))
    base = pa.array(np.arange(rows, dtype=np.int64))
    cols = {}
    for i in range(ncols):
        cols["f64" if i == 0 else f"c{i}"] = (pc.divide(pc.cast(base, pa.float64()), i + 1.0) if i % 2 == 0
                                              else pc.add(base, i))
    return pa.table(cols)


# -- the producer side


def _ack(sock):
    buf = b""
    while len(buf) < 8:
        chunk = sock.recv(8 - len(buf))
        if not chunk:
            raise EOFError("receiver gone")
        buf += chunk
    return struct.unpack("<d", buf)[0]


def peak_rss(pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss(pid="self"):
    """Resets VmHWM (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Method:
    def __init__(self, name, touch=True):
        self.name = name
        self.touch = touch
        self.counter = 0
        self.last = {}
        if name == "ray":
            self._start_ray()
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl_ours, ctl_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--receiver", name, str(theirs.fileno()),
             str(ctl_theirs.fileno()), "1" if touch else "0"],
            pass_fds=[theirs.fileno(), ctl_theirs.fileno()], env=env)
        theirs.close()
        ctl_theirs.close()
        self.sock = ours
        if name == "pickle":
            from multiprocessing.connection import Connection
            self.conn = Connection(os.dup(ours.fileno()))
        if name == "ipc_stream":
            self.wfile = ours.makefile("wb", buffering=1 << 20)
        _ack(self.ctl_ours)  # ready

    def _start_ray(self):
        import ray

        if not ray.is_initialized():
            # the actor's class lives in this module: let Ray's workers import it
            path = os.pathsep.join(p for p in (os.path.dirname(os.path.abspath(__file__)),
                                               os.environ.get("PYTHONPATH")) if p)
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})

        @ray.remote(num_cpus=0)
        class Receiver:
            def pid(self):
                return os.getpid()

            def take(self, table, touch):
                if touch:
                    return float(pc.sum(table.column(SUM_COLUMN)).as_py())
                return float(table.num_rows)

            def peak(self):
                return peak_rss()

            def reset(self):
                reset_peak_rss()

        self.ray = ray
        self.actor = Receiver.remote()
        self.pid = ray.get(self.actor.pid.remote())

    @property
    def receiver_pid(self):
        return self.pid if self.name == "ray" else self.proc.pid

    def receiver_peak_rss(self):
        if self.name == "ray":
            return self.ray.get(self.actor.peak.remote())
        return peak_rss(self.proc.pid)

    def reset_receiver_peak(self):
        if self.name == "ray":
            self.ray.get(self.actor.reset.remote())
        else:
            reset_peak_rss(self.proc.pid)

    def handoff(self, table):
        """Hands one table over; returns the receiver's answer (sum or row count)."""
        self.counter += 1
        n = self.name
        if n == "zerrow":
            import zerrow_pool as z

            s = z.send(self.sock, table)
            self.last = {"bytes_copied": s.bytes_copied, "nbytes": s.nbytes, "segments": None}
            return _ack(self.ctl_ours)
        if n == "ipc_stream":
            with pa.ipc.new_stream(self.wfile, table.schema) as w:
                w.write_table(table)
            self.wfile.flush()
            return _ack(self.ctl_ours)
        if n == "ipc_shm_file":
            path = os.path.join(SHM_DIR, f"zerrow_bench_{os.getpid()}_{self.counter}.arrow")
            with pa.OSFile(path, "wb") as f:
                with pa.ipc.new_file(f, table.schema) as w:
                    w.write_table(table)
            msg = path.encode()
            self.sock.sendall(struct.pack("<I", len(msg)) + msg)
            try:
                return _ack(self.ctl_ours)
            finally:
                os.unlink(path)
        if n == "pickle":
            self.conn.send(table)
            return _ack(self.ctl_ours)
        if n == "shared_mem":
            from multiprocessing import shared_memory

            mock = pa.MockOutputStream()
            with pa.ipc.new_stream(mock, table.schema) as w:
                w.write_table(table)
            size = mock.size()
            shm = shared_memory.SharedMemory(create=True, size=size)
            try:
                target = pa.py_buffer(shm.buf)
                sink = pa.FixedSizeBufferWriter(target)
                w = pa.ipc.new_stream(sink, table.schema)
                w.write_table(table)
                w.close()
                sink.close()
                del w, sink, target
                msg = shm.name.encode()
                self.sock.sendall(struct.pack("<IQ", len(msg), size) + msg)
                return _ack(self.ctl_ours)
            finally:
                shm.close()
                shm.unlink()
        if n == "ray":
            ref = self.ray.put(table)
            out = self.ray.get(self.actor.take.remote(ref, self.touch))
            del ref
            return out
        raise ValueError(n)

    def close(self):
        if self.name == "ray":
            self.ray.kill(self.actor)
            return
        self.sock.close()
        self.ctl_ours.close()
        if self.name == "pickle":
            self.conn.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the receiver side


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def receiver(name, fd, ctl_fd, touch):
    sock = socket.socket(fileno=fd)
    ctl = socket.socket(fileno=ctl_fd)

    def done(table):
        value = float(pc.sum(table.column(SUM_COLUMN)).as_py()) if touch else float(table.num_rows)
        ctl.sendall(struct.pack("<d", value))

    if name == "zerrow":
        import zerrow_pool as z
    if name == "pickle":
        from multiprocessing.connection import Connection
        conn = Connection(os.dup(fd))
    if name == "ipc_stream":
        rfile = sock.makefile("rb", buffering=1 << 20)
    if name == "shared_mem":
        from multiprocessing import resource_tracker, shared_memory
    ctl.sendall(struct.pack("<d", 0.0))
    while True:
        try:
            if name == "zerrow":
                t = z.recv(sock)
                done(t)
            elif name == "ipc_stream":
                t = pa.ipc.open_stream(rfile).read_all()
                done(t)
            elif name == "ipc_shm_file":
                (n,) = struct.unpack("<I", _recv_exact(sock, 4))
                path = _recv_exact(sock, n).decode()
                with pa.memory_map(path) as src:
                    t = pa.ipc.open_file(src).read_all()
                    done(t)
            elif name == "pickle":
                t = conn.recv()
                done(t)
            elif name == "shared_mem":
                n, size = struct.unpack("<IQ", _recv_exact(sock, 12))
                shm_name = _recv_exact(sock, n).decode()
                shm = shared_memory.SharedMemory(name=shm_name)
                resource_tracker.unregister(shm._name, "shared_memory")  # the producer unlinks it
                buf = pa.py_buffer(shm.buf)
                t = pa.ipc.open_stream(buf).read_all()
                done(t)
                del t, buf
                shm.close()
            t = None
        except (EOFError, ConnectionResetError, pa.ArrowInvalid, OSError):
            return


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--receiver":
        receiver(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
