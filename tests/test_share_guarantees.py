"""The promises of share(): lifetime, read-only consumers, sealing, no exposure of
bytes that were not live at freeze, resharing without copies, one mapping per
segment."""

import ctypes
import errno
import fcntl
import gc
import mmap
import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import zerrow_pool as z
from test_share_common import (
    Worker, all_nodes, fd_identity, make_table, memfd_mappings, parse_sipc, pooled_table,
)

libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PAGE = mmap.PAGESIZE


def _mprotect(address, length, prot):
    start = address & ~(PAGE - 1)
    rc = libc.mprotect(ctypes.c_void_p(start), ctypes.c_size_t(address + length - start), prot)
    return 0 if rc == 0 else ctypes.get_errno()


# -- lifetime: the consumer's table outlives whatever the producer does


PRODUCE = """
with z.scope():
    t = make_table({rows}, seed={seed})
z.send(sock, t)
result = t.column(0)[{rows} - 1].as_py()
"""


@pytest.mark.parametrize("fate", ["free", "reuse", "exit", "sigkill"])
def test_consumer_table_survives_producer(fate):
    rows = 200_000
    expected = make_table(rows, seed=5)
    with Worker() as w:
        w.run(PRODUCE.format(rows=rows, seed=5))
        got = w.recv()
        assert got.equals(expected)
        if fate in ("free", "reuse"):
            w.run("del t; gc.collect(); z.release_unused()")
        if fate == "reuse":
            # allocate and write much more than the table, in scopes and in the default pool
            w.run("""
            keep = []
            for i in range(8):
                with z.scope():
                    keep.append(make_table(200_000, seed=100 + i))
                keep.append(pa.array(np.full(400_000, 0x5A5A5A5A, dtype=np.int64)).cast(pa.int64(),
                            memory_pool=z.pool()))
            keep.append(pc.add(pa.array(np.arange(4_000_000)), 7, memory_pool=z.pool()))
            del keep; gc.collect(); z.release_unused()
            with z.scope():
                again = make_table(200_000, seed=77)
            result = z.stats()["bytes_allocated"]
            """)
        if fate == "exit":
            assert w.close(timeout=30) == 0
        if fate == "sigkill":
            w.kill(signal.SIGKILL)
            assert w.proc.returncode == -signal.SIGKILL
        assert got.equals(expected)
        got.validate(full=True)
        assert pc.sum(got.column("c0")).as_py() == pc.sum(expected.column("c0")).as_py()
    # and after the worker is gone for good
    assert got.equals(expected)


# -- consumers hold read-only files


def _received_share(seal=True, rows=50_000):
    w = Worker()
    w.run(f"""
    with z.scope():
        t = make_table({rows}, seed=3)
    z.send(sock, t, seal={seal})
    """)
    return w, w.recv_share()


@pytest.mark.parametrize("seal", [True, False])
def test_consumer_fds_are_read_only(seal):
    w, s = _received_share(seal)
    with w, s:
        for fd in s.fds:
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            size = os.fstat(fd).st_size
            with pytest.raises(PermissionError):
                mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            with pytest.raises(OSError) as e:
                os.write(fd, b"x")
            assert e.value.errno == errno.EBADF
            with pytest.raises(OSError):
                os.ftruncate(fd, 0)
            # the segment can never shrink: not even through a writable reopen
            try:
                rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
            except PermissionError:
                continue
            try:
                with pytest.raises(PermissionError):
                    os.ftruncate(rw, 0)
                with pytest.raises(PermissionError):
                    os.ftruncate(rw, size + PAGE)
            finally:
                os.close(rw)
        t = s.attach()
        buf = t.column(0).chunk(0).buffers()[1]
        assert _mprotect(buf.address, buf.size, mmap.PROT_READ | mmap.PROT_WRITE) == errno.EACCES
        assert _mprotect(buf.address, buf.size, mmap.PROT_READ) == 0


def test_sealed_share_cannot_be_written_through_a_writable_reopen():
    w, s = _received_share(seal=True)
    with w, s:
        pid = w.pid
        d = parse_sipc(s.descriptor)
        assert d["flags"] & 1
        for fd in s.fds:
            size = os.fstat(fd).st_size
            # reopen the consumer's fd and the producer's own fd read-write
            targets = [f"/proc/self/fd/{fd}"]
            ino = os.fstat(fd).st_ino
            for name in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.stat(f"/proc/{pid}/fd/{name}").st_ino == ino:
                        targets.append(f"/proc/{pid}/fd/{name}")
                except OSError:
                    pass
            assert len(targets) >= 2, "the producer keeps its memfd open"
            for path in targets:
                rw = os.open(path, os.O_RDWR)
                try:
                    with pytest.raises(PermissionError):  # F_SEAL_WRITE
                        os.pwrite(rw, b"evil", 0)
                    with pytest.raises(PermissionError):
                        mmap.mmap(rw, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                    with pytest.raises(PermissionError):
                        os.ftruncate(rw, 0)
                finally:
                    os.close(rw)
        t = s.attach()
        assert t.equals(make_table(50_000, seed=3))


def test_unsealed_share_is_still_sealed_against_resizing():
    w, s = _received_share(seal=False)
    with w, s:
        assert parse_sipc(s.descriptor)["flags"] == 0
        for fd in s.fds:
            rw = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
            try:
                with pytest.raises(PermissionError):
                    os.ftruncate(rw, 0)
                with pytest.raises(PermissionError):
                    os.ftruncate(rw, os.fstat(fd).st_size * 2)
            finally:
                os.close(rw)


WRITE_AFTER_SHARE = """
import ctypes, pyarrow as pa, zerrow_pool as z
with z.scope():
    a = pa.array(range(100_000), pa.int64())
s = z.share(a, seal={seal})
buf = a.buffers()[1]
print("shared", flush=True)
ctypes.memset(buf.address, 0x41, 8)
print("wrote", flush=True)
"""


def test_producer_cannot_write_sealed_buffers():
    p = subprocess.run([sys.executable, "-c", WRITE_AFTER_SHARE.format(seal=True)], capture_output=True,
                       text=True, timeout=60)
    assert "shared" in p.stdout and "wrote" not in p.stdout
    assert p.returncode == -signal.SIGSEGV, p.stderr


def test_producer_may_write_unsealed_buffers():
    p = subprocess.run([sys.executable, "-c", WRITE_AFTER_SHARE.format(seal=False)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "wrote" in p.stdout, p.stderr


# -- a consumer reads only bytes live at freeze


SECRET = b"S3CR3T-zerrow-canary-"

PLANT = """
secret = {secret!r}
keep_out = []
with z.scope():
    # freed temporaries next to what is shared: a small one (slab) and a large one (extent)
    tmp_small = pa.array([secret.decode() * 3] * 50)
    tmp_large = pa.array([secret.decode() * 40] * 5000)
    shared = make_table(20_000, seed=9)
    tmp_mid = pa.array([secret.decode()] * 300)
    shared = shared.append_column("s2", pa.array(["ok"] * 20_000))
    del tmp_small, tmp_large, tmp_mid
    gc.collect()
# outside the scope, allocated right after, in the zerrow pool
keep_out.append(pa.array([secret.decode() * 10] * 2000, memory_pool=z.pool()))
keep_out.append(pa.array([secret.decode()] * 5, memory_pool=z.pool()))
s = z.send(sock, shared)
result = {{"exposed": s.bytes_exposed, "nbytes": s.nbytes, "copied": s.bytes_copied}}
"""


def _data_ranges(fd):
    """The (start, end) ranges of a file that hold data (holes read as zeros)."""
    size = os.fstat(fd).st_size
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def _scan_segments(fds):
    """fds whose readable bytes contain the secret (every data page of every file, read-only)."""
    found = []
    for fd in fds:
        size = os.fstat(fd).st_size
        if size == 0:
            continue
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
            for start, end in _data_ranges(fd):
                lo = max(0, start - len(SECRET))
                if m.find(SECRET[:8], lo, end) >= 0:
                    found.append(fd)
                    break
    return found


def test_consumer_cannot_read_freed_or_foreign_secrets():
    with Worker() as w:
        counters = w.run(PLANT.format(secret=SECRET))
        with w.recv_share() as s:
            found = _scan_segments(s.fds)
            assert not found, "a secret freed before the share, or allocated outside the scope, is readable"
            t = s.attach()
        assert t.column("s2")[0].as_py() == "ok"
        assert counters["copied"] == 0
        # beyond what is referenced, only padding and size-class/page rounding of the
        # shared buffers is exposed (at most a page per buffer), never the temporaries
        assert counters["exposed"] <= PAGE * s.nbuffers, counters
        assert counters["exposed"] < 0.05 * counters["nbytes"], counters


def test_freed_secret_inside_a_frozen_segment_is_zeroed_in_process():
    """Same, in one process: the bytes of a freed temporary that shared a
    segment with the shared table read as zeros through the consumer's fd."""
    with z.scope():
        keep = pa.array(range(1000), pa.int64())
        tmp = pa.array([SECRET.decode() * 4] * 100)
        addr = tmp.buffers()[2].address
        del tmp
        gc.collect()
    with z.scope():
        control = pa.array([SECRET.decode()])
    with z.share(control) as s:
        assert _scan_segments(s.fds), "the scan finds a secret that is shared"
    with z.share(keep) as s:
        found = _scan_segments(s.fds)
        assert not found
        # the segment holding keep also held the secret: same mapping in this process
        with open("/proc/self/maps") as f:
            spans = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in f]
        (lo, hi), = [(lo, hi) for lo, hi in spans if lo <= keep.buffers()[1].address < hi]
        if lo <= addr < hi:
            assert ctypes.string_at(addr, len(SECRET)) != SECRET


# -- resharing: an attached table shared on costs nothing more


RESHARE = """
def segs(share):
    return sorted({(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in share.fds})
t = recv_obj(sock)
out = {}
for name, obj in [("table", t), ("slice", t.slice(100, 5000)), ("projection", t.select(["c2", "c0"])),
                  ("batch", t.combine_chunks().to_batches()[0].slice(10)),
                  ("column", t.column("c1")), ("array", t.column("c2").chunk(0).slice(3))]:
    with z.share(obj) as s:
        out[name] = {"copied": s.bytes_copied, "zero_copy": s.bytes_zero_copy, "segs": segs(s),
                     "exposed": s.bytes_exposed}
new_col = pa.array(np.arange(t.num_rows, dtype=np.float64) * 2)  # made outside the pool
plus = t.append_column("new", new_col)
with z.share(plus) as s:
    out["plus"] = {"copied": s.bytes_copied, "zero_copy": s.bytes_zero_copy, "segs": segs(s),
                   "new_nbytes": new_col.nbytes}
    z.send(sock, s)
result = out
"""


def test_resharing_refers_to_the_same_segments():
    t = pooled_table(30_000, seed=4)
    with z.share(t) as mine:
        my_segs = sorted({fd_identity(fd) for fd in mine.fds})
    with Worker() as w:
        w.send(t)
        out = w.run(RESHARE)
        for name in ("table", "slice", "projection", "batch", "column", "array"):
            assert out[name]["copied"] == 0, name
            assert out[name]["zero_copy"] > 0, name
            assert set(map(tuple, out[name]["segs"])) <= set(my_segs), name
        plus = out["plus"]
        assert plus["copied"] == plus["new_nbytes"] == 30_000 * 8
        assert set(map(tuple, plus["segs"])) - set(my_segs), "the new column lies in a fresh segment"
        assert len(set(map(tuple, plus["segs"])) - set(my_segs)) == 1
        back = w.recv()
        assert back.drop_columns(["new"]).equals(t)
        assert back.column("new").to_pylist()[:3] == [0.0, 2.0, 4.0]
        # the round trip lands in the very segments we made
        with z.share(back.drop_columns(["new"])) as again:
            assert sorted({fd_identity(fd) for fd in again.fds}) == my_segs
            assert again.bytes_copied == 0


# -- one mapping per segment in the receiver


def test_consecutive_tables_from_one_segment_map_it_once():
    with z.scope():
        tables = [make_table(2000, seed=i) for i in range(10)]
    with z.share(tables[0]) as s0:
        inos = {os.fstat(fd).st_ino for fd in s0.fds}
    before = memfd_mappings()
    with Worker() as w:
        for t in tables:
            w.send(t)
        w.run("""
        got = [recv_obj(sock) for _ in range(10)]
        maps = {}
        for line in open("/proc/self/maps"):
            p = line.split()
            if len(p) > 5 and "memfd:" in p[5]:
                maps[int(p[4])] = maps.get(int(p[4]), 0) + 1
        """)
        out = w.run("result = {'maps': {str(k): v for k, v in maps.items()}, 'rows': sum(g.num_rows for g in got)}")
        assert out["rows"] == 20_000
        for ino in inos:
            assert out["maps"].get(str(ino)) == 1, out["maps"]
    # and in process: attaching the same share repeatedly keeps one mapping
    with z.share(tables[1]) as s:
        got = [s.attach() for _ in range(5)] + [z.attach(s.descriptor, s.fds)]
        after = memfd_mappings()
        for ino in inos:
            assert after.get(ino, 0) - before.get(ino, 0) <= 1
    del got


REPROTECT = """
import ctypes, mmap
import pyarrow as pa, zerrow_pool as z
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
with z.scope():
    a = pa.array(range(100_000), pa.int64())
s = z.share(a, seal=True)
consumer = z.attach(s.descriptor, s.fds)   # a read-only mapping of its own
buf = a.buffers()[1]
page = buf.address & ~(mmap.PAGESIZE - 1)
if libc.mprotect(ctypes.c_void_p(page), mmap.PAGESIZE, mmap.PROT_READ | mmap.PROT_WRITE) == 0:
    ctypes.memset(buf.address, 0x41, 8)
print(consumer[0].as_py())
"""


def test_sealed_bytes_cannot_be_made_writable_again():
    p = subprocess.run([sys.executable, "-c", REPROTECT], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "0", "the consumer saw the producer's write after sealing"


def test_bytes_exposed_counts_live_neighbours():
    """Outside a scope, other live buffers of the default arena's segments are
    readable by the consumer: share() must say so in bytes_exposed."""
    pool = z.pool()
    secret = pa.array([SECRET.decode() * 50] * 400, memory_pool=pool)  # ~400 KiB, live
    shared = pa.array(range(10_000), pa.int64(), memory_pool=pool)
    with z.share(shared) as s:
        found = _scan_segments(s.fds)
        if found:
            assert s.bytes_exposed >= secret.buffers()[2].size, (s.bytes_exposed, secret.nbytes)
        else:
            assert s.bytes_exposed < 2 * PAGE * s.nbuffers
    del secret


TOCTOU = """
with z.scope():
    s_arr = pa.array(["abc"] * 1000)
z.send(sock, pa.table({{"s": s_arr}}), seal={seal})
result = {{"offsets": s_arr.buffers()[1].address}}
"""

CORRUPT = """
import ctypes
# the producer rewrites the last string offset after the consumer validated it
ctypes.c_int32.from_address(result["offsets"] + 4 * 1000).value = 1 << 30
"""


def test_full_validation_requires_immutable_segments():
    with Worker() as w:
        w.run("result = None")
        out = w.run(TOCTOU.format(seal=False))
        w.run(f"result = {out!r}")
        with w.recv_share() as s:
            try:
                t = s.attach(validate_full=True)
            except z.ShareError as e:
                assert "seal" in str(e)
                return
        w.run(CORRUPT)
        # the validated table now ends past its data: reading it would fault or leak
        assert t.column("s").chunk(0).buffers()[1].to_pybytes()[-4:] != (1 << 30).to_bytes(4, "little")


def test_sealed_share_is_immune_to_the_producer():
    """With seal=True the producer cannot rewrite what the consumer validated."""
    with Worker() as w:
        out = w.run(TOCTOU.format(seal=True))
        w.run(f"result = {out!r}")
        t = w.recv(validate_full=True)
        with pytest.raises(AssertionError, match="Error|fault|Segmentation|SIGSEGV|died|exited"):
            w.run(CORRUPT, timeout=20)
        assert t.column("s").to_pylist() == ["abc"] * 1000
