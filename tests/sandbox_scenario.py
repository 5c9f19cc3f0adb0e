"""A hostile node next to a pipeline holding a secret (used by test_sandbox.py).

``payroll`` makes a table full of a secret it draws at run time, and reads a
Parquet source holding another, whose file it then deletes; it keeps both
alive (in the coordinator, the decode cache, and mapped in a sandbox) until
``nosy`` is done.
``nosy``, a node of another pipeline in the same runtime, looks for the
secret everywhere a process on this machine can reach: every other
process's descriptors (/proc/PID/fd), memory (/proc/PID/mem,
process_vm_readv), ptrace, the runtime's directories, and fresh memory of
its own. It returns what it found and how each door answered.

Run as a script: ``python sandbox_scenario.py TRANSPORT ISOLATION MARKER_DIR``
prints the JSON of ``run_scenario``.
"""
import ctypes
import json
import os
import re
import secrets
import stat
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from zerrow_pool import pipeline as zp

MARKER_ENV = "ZERROW_SANDBOX_MARKERS"
COORDINATOR_ENV = "ZERROW_SANDBOX_COORDINATOR"
# The secret: a prefix and 32 hex digits drawn by payroll; this pattern's own
# text (in nosy's memory) cannot match it.
PATTERN = re.compile(rb"ZSECRET-[0-9a-f]{32}")
READ_LIMIT = 64 << 20  # per file or descriptor
MEM_READ_LIMIT = 256 << 20  # per process (the scan must end in a test's time)


def _marker(name):
    return os.path.join(os.environ[MARKER_ENV], name)


def _wait_for(name, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not os.path.exists(_marker(name)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {name} marker after {timeout}s")
        time.sleep(0.05)


@zp.node
def secret_table():
    token = ("ZSECRET-" + secrets.token_hex(16)).encode()
    return pa.table({"salary": pa.array([token] * 100_000, pa.binary())})


SOURCE_ENV = "ZERROW_SANDBOX_SOURCE"
salaries = zp.parquet("salaries", os.environ.get(SOURCE_ENV, "unset.parquet"))


@zp.node
def payroll_hold(secret_table, salaries):
    # The source's file goes: what is left of it is payroll's decoded input
    # (the decode cache's entries, with the zerrow transport) and this node's memory.
    os.unlink(os.environ[SOURCE_ENV])
    open(_marker("ready"), "w").close()
    _wait_for("done")
    return pa.table({"rows": [secret_table.num_rows + salaries.num_rows]})


def _search(data: bytes) -> bool:
    return PATTERN.search(data) is not None


def _read_fd_path(path):
    """The data of a regular file (memfds included) by path, up to READ_LIMIT;
    b"" for pipes, sockets and devices, which could block. Reads only the
    file's data extents, with pread: faulting holes of another process's
    memfd in (as mmap would) would allocate its pages."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return b""
        out, pos = [], 0
        budget = READ_LIMIT
        while budget > 0 and pos < st.st_size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break  # no data past pos
            end = min(os.lseek(fd, start, os.SEEK_HOLE), start + budget)
            out.append(os.pread(fd, end - start, start))
            budget -= end - start
            pos = end
        return b"".join(out)
    finally:
        os.close(fd)


def _regions(pid):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            addrs, perms = line.split()[:2]
            if perms.startswith("r"):
                lo, hi = (int(x, 16) for x in addrs.split("-"))
                yield lo, hi


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def _vm_read(pid, addr, n):
    buf = ctypes.create_string_buffer(n)
    local, remote = _IoVec(ctypes.addressof(buf), n), _IoVec(addr, n)
    got = _libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if got < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return buf.raw[:got]


def _doors(pid, found, denied, ours):
    """Try every door into process ``pid``; note hits in ``found``. ``ours``
    (the runtime's own processes): also read their memory at length and try
    ptrace; others' only get a knock on each door (reading memory faults it
    in, and ptrace stops the tracee)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        denied["fd"] += 1
        names = []
    for name in names:
        try:
            if _search(_read_fd_path(f"/proc/{pid}/fd/{name}")):
                found.append(f"/proc/{pid}/fd/{name}")
        except OSError:
            denied["fd"] += 1
    try:
        regions = list(_regions(pid))
    except OSError:
        denied["maps"] += 1
        regions = [(0x400000, 0x401000)]  # still knock on the door
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            budget = MEM_READ_LIMIT if ours else 4096
            for lo, hi in regions:
                if budget <= 0:
                    break
                try:
                    mem.seek(lo)
                    n = min(hi - lo, budget)
                    budget -= n
                    if _search(mem.read(n)):
                        found.append(f"/proc/{pid}/mem")
                        break
                except OSError:
                    pass
    except OSError:
        denied["mem"] += 1
    for lo, hi in regions:
        try:
            if _search(_vm_read(pid, lo, min(hi - lo, (1 << 20) if ours else 4096))):
                found.append(f"process_vm_readv({pid})")
                break
        except OSError as e:
            if e.errno == 1:  # EPERM: the door is shut
                denied["vm_readv"] += 1
                break
    if not ours:
        return
    if _libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
        found.append(f"ptrace attach to {pid}")
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:  # the tracee stops; only then can it be let go
            if os.waitpid(pid, 0x40000000 | os.WNOHANG)[0]:  # __WALL
                break
            time.sleep(0.01)
        _libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
    else:
        denied["ptrace"] += 1


def _descendants(root: int) -> set:
    children: dict = {}
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/status") as f:
                ppid = next(int(ln.split()[1]) for ln in f if ln.startswith("PPid:"))
            children.setdefault(ppid, []).append(int(p))
        except (OSError, ValueError, StopIteration):
            pass
    out, todo = {root}, [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _files(roots, found):
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for f in files:
                path = os.path.join(dirpath, f)
                try:
                    if _search(_read_fd_path(path)):
                        found.append(path)
                except OSError:
                    pass


@zp.node
def nosy():
    _wait_for("ready")
    found: list = []
    denied = {"fd": 0, "maps": 0, "mem": 0, "vm_readv": 0, "ptrace": 0}
    me = os.getpid()
    others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    runtime = _descendants(int(os.environ[COORDINATOR_ENV]))
    for pid in others:
        try:
            _doors(pid, found, denied, ours=pid in runtime)
        except OSError:
            pass  # the process went away
    roots = {"/dev/shm", tempfile.gettempdir()}
    for env in ("ZERROW_COPY_DIR", "ZERROW_SPILL_DIR", "XDG_RUNTIME_DIR"):
        if os.environ.get(env):
            roots.add(os.environ[env])
    _files(sorted(roots), found)
    fresh = pa.allocate_buffer(256 << 20)  # memory others freed, if any came back unscrubbed
    if _search(memoryview(fresh)):
        found.append("fresh memory of this process")
    open(_marker("done"), "w").close()
    return pa.table({"found": pa.array(sorted(set(found)), pa.string())},
                    metadata={"denied": json.dumps(denied)})


def run_scenario(transport: str, isolation: str, marker_dir: str) -> dict:
    os.environ[MARKER_ENV] = marker_dir
    os.environ[COORDINATOR_ENV] = str(os.getpid())
    private = tempfile.mkdtemp(prefix="payroll-")  # 0700
    source = os.path.join(private, "salaries.parquet")
    token = "ZSECRET-" + secrets.token_hex(16)
    pq.write_table(pa.table({"salary": [token] * 50_000}), source)
    os.environ[SOURCE_ENV] = source
    salaries.path = source
    payroll = zp.Pipeline("payroll", [secret_table, salaries, payroll_hold])
    spy = zp.Pipeline("nosy", [nosy])
    with zp.Runtime(workers=3, transport=transport, isolation=isolation) as rt:
        pay, spied = rt.run_many([payroll, spy])
    os.rmdir(private)
    return {"payroll_rows": pay["payroll_hold"]["rows"][0].as_py(),
            "found": spied["nosy"]["found"].to_pylist(), "euid": os.geteuid(),
            "denied": json.loads(spied["nosy"].schema.metadata[b"denied"])}


if __name__ == "__main__":
    print(json.dumps(run_scenario(sys.argv[1], sys.argv[2], sys.argv[3])))
