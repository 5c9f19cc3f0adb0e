"""Helpers shared by the test_share_*.py files, plus tests of the helpers and of
the Share object itself.

* ``parse_sipc`` / ``encode_sipc``: an independent Python reading of the SIPC
  descriptor format (docs/SHARED_IPC.md), used to look inside descriptors and
  to build malformed ones field by field.
* ``sipc_fields``: every fixed-size integer field of a descriptor with its byte
  offset, for the fuzzer's boundary-value overwrites.
* ``Worker``: a persistent child interpreter joined by an AF_UNIX socket that
  runs a snippet of code with ``sock`` (the socket) and ``reply(obj)`` (a JSON
  line on stdout) in scope.
"""

import gc
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

import zerrow_pool as z

MAGIC = b"ZSIP"
VERSION = 1
NODE_FIXED = 8 * 3 + 4 * 3
REF_SIZE = 4 + 8 + 8
SEG_ENTRY = 1 + 8


# --------------------------------------------------------------------------
# SIPC descriptor, read and written by an independent implementation


class SipcError(ValueError):
    pass


class _Reader:
    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0
        self.fields = []  # (offset, size, signed, name)

    def get(self, fmt, name):
        size = struct.calcsize("<" + fmt)
        if len(self.data) - self.pos < size:
            raise SipcError(f"truncated reading {name}")
        (v,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.fields.append((self.pos, size, fmt.islower(), name))
        self.pos += size
        return v

    def raw(self, n, name):
        if len(self.data) - self.pos < n:
            raise SipcError(f"truncated reading {name}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b


def _count(r, name, item, strict):
    n = r.get("I", name)
    if strict and n * item > len(r.data) - r.pos:
        raise SipcError(f"{name} {n} exceeds the descriptor size")
    return n


def _get_node(r, strict=False, depth=0):
    if strict and depth > 64:
        raise SipcError("nesting deeper than 64")
    n = {
        "length": r.get("q", "node.length"),
        "null_count": r.get("q", "node.null_count"),
        "offset": r.get("q", "node.offset"),
    }
    nbuf = r.get("I", "node.nbuffers")
    nchild = r.get("I", "node.nchildren")
    n["dictionary"] = r.get("i", "node.dictionary")
    if strict and (n["length"] < 0 or n["offset"] < 0 or not -1 <= n["null_count"] <= n["length"]):
        raise SipcError("node has length, offset, null count out of range")
    if nbuf * REF_SIZE > len(r.data) - r.pos or nchild * NODE_FIXED > len(r.data) - r.pos:
        raise SipcError("count exceeds descriptor")
    n["buffers"] = [(r.get("i", "ref.segment"), r.get("Q", "ref.offset"), r.get("Q", "ref.length"))
                    for _ in range(nbuf)]
    n["children"] = [_get_node(r, strict, depth + 1) for _ in range(nchild)]
    return n


def parse_sipc(data, with_fields=False, strict=False):
    """Descriptor bytes -> dict (kind, flags, num_rows, segments, schema, dictionaries, columns).

    strict: also apply every parsing rule of docs/SHARED_IPC.md (version, kinds,
    flags, counts against the bytes left, node fields, depth), so that it
    accepts exactly what the C++ reader's Parse() accepts."""
    r = _Reader(data)
    if r.raw(4, "magic") != MAGIC:
        raise SipcError("bad magic")
    d = {"version": r.get("H", "version")}
    if strict and d["version"] != VERSION:
        raise SipcError(f"version {d['version']} is not supported")
    d["kind"] = r.get("B", "kind")
    if strict and not 1 <= d["kind"] <= 4:
        raise SipcError("unknown object kind")
    d["flags"] = r.get("B", "flags")
    if strict and d["flags"] & ~1:
        raise SipcError("unknown flags")
    d["num_rows"] = r.get("q", "num_rows")
    if strict and d["num_rows"] < 0:
        raise SipcError("negative row count")
    nseg = _count(r, "nsegments", SEG_ENTRY, strict)
    if strict and nseg > 4096:
        raise SipcError("more than 4096 segments")
    d["segments"] = []
    for _ in range(nseg):
        seg = (r.get("B", "segment.kind"), r.get("Q", "segment.min_size"))
        if strict and seg[0] not in (1, 2, 3):
            raise SipcError("unknown segment kind")
        d["segments"].append(seg)
    slen = r.get("I", "schema_len")
    d["schema"] = r.raw(slen, "schema")
    d["dictionaries"] = [_get_node(r, strict) for _ in range(_count(r, "ndictionaries", NODE_FIXED, strict))]
    ncol = _count(r, "ncolumns", 4, strict)
    d["columns"] = [[_get_node(r, strict) for _ in range(_count(r, "nchunks", NODE_FIXED, strict))]
                    for _ in range(ncol)]
    if r.pos != len(r.data):
        raise SipcError(f"{len(r.data) - r.pos} trailing bytes")
    return (d, r.fields) if with_fields else d


def _put_node(out, n):
    out += struct.pack("<qqqIIi", n["length"], n["null_count"], n["offset"], len(n["buffers"]),
                       len(n["children"]), n["dictionary"])
    for seg, off, ln in n["buffers"]:
        out += struct.pack("<iQQ", seg, off, ln)
    for c in n["children"]:
        _put_node(out, c)


def encode_sipc(d):
    out = bytearray(MAGIC)
    out += struct.pack("<HBBq", d.get("version", VERSION), d["kind"], d["flags"], d["num_rows"])
    out += struct.pack("<I", len(d["segments"]))
    for kind, size in d["segments"]:
        out += struct.pack("<BQ", kind, size)
    out += struct.pack("<I", len(d["schema"])) + d["schema"]
    out += struct.pack("<I", len(d["dictionaries"]))
    for n in d["dictionaries"]:
        _put_node(out, n)
    out += struct.pack("<I", len(d["columns"]))
    for col in d["columns"]:
        out += struct.pack("<I", len(col))
        for n in col:
            _put_node(out, n)
    return bytes(out)


def sipc_fields(data):
    """[(offset, size, signed, name)] of every integer field of a well-formed descriptor."""
    return parse_sipc(data, with_fields=True)[1]


def all_nodes(d):
    def walk(n):
        yield n
        for c in n["children"]:
            yield from walk(c)
    for n in d["dictionaries"]:
        yield from walk(n)
    for col in d["columns"]:
        for n in col:
            yield from walk(n)


# --------------------------------------------------------------------------
# process-level facts


def fd_count():
    """Open fds now, after a cyclic collection.

    Collected first so that an earlier test's garbage (an attached table or a
    Share caught in a reference cycle holds fds) cannot be closed by a
    collection in the middle of a measurement and skew it.
    """
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def open_fds():
    """The open fds as {(fd, device, inode)}, after a cyclic collection (see fd_count).

    ``open_fds() - before`` is what a piece of code opened and left open: an fd
    number closed by someone else and reused for another file still counts.
    """
    gc.collect()
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except FileNotFoundError:  # the listing's own directory fd, closed by now
            continue
        out.add((int(name), st.st_dev, st.st_ino))
    return out


def memfd_mappings(pid="self"):
    """{inode: number of /proc/<pid>/maps lines} for memfd mappings."""
    out = {}
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 5 and "memfd:" in parts[5]:
                out[int(parts[4])] = out.get(int(parts[4]), 0) + 1
    return out


def fd_identity(fd):
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def sample_table(rows=1000, cols=3, seed=0):
    """A small table of ints, floats and strings, made in a fresh zerrow scope."""
    with z.scope():
        data = {}
        for c in range(cols):
            if c % 3 == 0:
                data[f"i{c}"] = pa.array([(i * 7 + seed + c) for i in range(rows)], pa.int64())
            elif c % 3 == 1:
                data[f"f{c}"] = pa.array([(i + seed) * 0.5 for i in range(rows)], pa.float64())
            else:
                data[f"s{c}"] = pa.array([f"v{i + seed}" if i % 5 else None for i in range(rows)])
        return pa.table(data)


# --------------------------------------------------------------------------
# a persistent child process


# Deterministic tables built with pyarrow compute (so that every buffer comes
# from the default pool, i.e. the zerrow pool inside scope()).
TABLE_SRC = """
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

def make_table(rows, seed=1, ncols=3):
    base = pa.array(np.arange(rows, dtype=np.int64))
    cols = {}
    for c in range(ncols):
        ints = pc.add(pc.multiply(base, seed + c), c)
        if c % 3 == 0:
            cols[f"c{c}"] = ints
        elif c % 3 == 1:
            cols[f"c{c}"] = pc.divide(pc.cast(ints, pa.float64()), 3.0)
        else:
            cols[f"c{c}"] = pc.cast(ints, pa.string())
    return pa.table(cols)
"""
exec(TABLE_SRC)


def pooled_table(rows, seed=1, ncols=3):
    with z.scope():
        return make_table(rows, seed, ncols)


WORKER_PRELUDE = TABLE_SRC + """
import json, os, socket, sys, signal, traceback, gc, ctypes
import pyarrow as pa
import zerrow_pool as z
sock = socket.socket(fileno=int(os.environ["ZSOCK"]))
def recv_obj(sock, validate_full=False):
    return z.recv(sock, validate_full=validate_full)
def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\\n")
    sys.stdout.flush()
def serve():
    # run snippets sent as JSON lines on stdin; `result` is replied
    ns = globals()
    for line in sys.stdin:
        ns["result"] = None
        try:
            exec(json.loads(line), ns)
            reply({"result": ns["result"]})
        except BaseException:
            reply({"error": traceback.format_exc()})
"""


class Worker:
    """A child interpreter running ``code`` after WORKER_PRELUDE; ``self.sock`` is our end."""

    def __init__(self, code="serve()", timeout=60):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, ZSOCK=str(theirs.fileno()))
        env.pop("LD_PRELOAD", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER_PRELUDE + textwrap.dedent(code)], env=env,
            pass_fds=[theirs.fileno()], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        theirs.close()
        # select() before receiving rather than settimeout(), so that a silent
        # worker fails the test with its stderr
        self.sock = ours
        self.timeout = timeout

    @property
    def pid(self):
        return self.proc.pid

    def read(self, timeout=None):
        """The next JSON line the child printed."""
        timeout = self.timeout if timeout is None else timeout
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            self.kill()
            raise AssertionError(f"worker silent for {timeout}s; stderr:\n{self.proc.stderr.read()}")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=timeout)
            raise AssertionError(f"worker exited ({self.proc.returncode}); stderr:\n{self.proc.stderr.read()}")
        return json.loads(line)

    def start(self, code):
        """Starts a snippet in the worker (default code: serve()); see finish()."""
        self.proc.stdin.write(json.dumps(textwrap.dedent(code)) + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout=None):
        """The `result` of the snippet started last."""
        out = self.read(timeout)
        if "error" in out:
            raise AssertionError("in the worker:\n" + out["error"])
        return out["result"]

    def run(self, code, timeout=None):
        """Runs a snippet in the worker (default code: serve()); returns its `result`."""
        self.start(code)
        out = self.read(timeout)
        if "error" in out:
            raise AssertionError("in the worker:\n" + out["error"])
        return out["result"]

    def send(self, obj, **kw):
        try:
            return z.send(self.sock, obj, **kw)
        except z.ShareError:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}); stderr:\n{self.proc.stderr.read()}")
            raise

    def wait_readable(self, timeout=None):
        timeout = self.timeout if timeout is None else timeout
        r, _, _ = select.select([self.sock], [], [], timeout)
        if not r:
            raise AssertionError(f"nothing from the worker in {timeout}s")

    def recv(self, timeout=None, validate_full=False):
        self.wait_readable(timeout)
        return z.recv(self.sock, validate_full=validate_full)

    def recv_share(self, timeout=None):
        self.wait_readable(timeout)
        return z.recv_share(self.sock)

    def close(self, timeout=None):
        """Closes our ends (socket and stdin) and waits for the worker to exit."""
        self.sock.close()
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=self.timeout if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.kill()
        self.sock.close()
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        self.proc.stdout.close()
        self.proc.stderr.close()


def wait_until(pred, timeout=10.0, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


# --------------------------------------------------------------------------
# tests of the helpers and of the Share object


def test_python_reader_agrees_with_encoder():
    t = sample_table(100, 4)
    with z.share(t) as s:
        d = parse_sipc(s.descriptor)
        assert encode_sipc(d) == s.descriptor
        assert d["version"] == VERSION and d["kind"] == 1 and d["flags"] == 1
        assert d["num_rows"] == 100 and len(d["columns"]) == 4
        assert len(d["segments"]) == len(s.fds)
        assert pa.ipc.read_schema(pa.py_buffer(d["schema"])).equals(t.schema)
        refs = [b for n in all_nodes(d) for b in n["buffers"] if b[0] >= 0]
        assert len(refs) == s.nbuffers and sum(b[2] for b in refs) == s.nbytes


def test_share_object_counters_and_close():
    t = sample_table(500, 3)
    s = z.share(t)
    assert s.nbytes == s.bytes_zero_copy > 0 and s.bytes_copied == 0
    assert "Share(" in repr(s) and not s.closed
    before = fd_count()
    s.close()
    assert s.closed and fd_count() == before - len(parse_sipc(s.descriptor)["segments"])
    s.close()  # idempotent
    with pytest.raises(z.ShareError, match="closed"):
        s.attach()


def test_share_rejects_non_arrow():
    with pytest.raises(TypeError):
        z.share([1, 2, 3])


def test_attach_keeps_objects_valid_after_share_closed():
    t = sample_table(300, 3)
    with z.share(t) as s:
        got = s.attach()
    assert got.equals(t)
    del t
    assert got.column(0)[5].as_py() == 35
