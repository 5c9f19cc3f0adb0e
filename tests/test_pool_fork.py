"""fork(): the child gets copy-on-write pool memory, as with any other allocator.

The child reads the buffers it inherited; its writes to them stay its own and
the parent's stay the parent's; both keep allocating and sharing. Each
scenario runs in a fresh interpreter with a timeout, so a hang fails.
"""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import run_python

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = r"""
import ctypes, json, os, sys
import numpy as np, pyarrow as pa, pyarrow.compute as pc
import zerrow_pool as z

POOL = z.pool()

def filled(n, byte):
    b = pa.allocate_buffer(n, memory_pool=POOL)
    np.frombuffer(b, dtype=np.uint8)[:] = byte
    return b

def values(b):
    return sorted(set(np.frombuffer(b, dtype=np.uint8).tolist()))

def child(fn):
    # runs fn in a forked child; its JSON-able result comes back through a pipe
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = {"ok": fn()}
        except BaseException as e:
            out = {"error": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data)
"""


def run(body, timeout=120):
    return json.loads(run_python(PRELUDE + textwrap.dedent(body), timeout=timeout).strip().splitlines()[-1])


@pytest.mark.parametrize("size", [1000, 100_000, 8 << 20])
def test_child_writes_stay_in_the_child_and_parent_writes_in_the_parent(size):
    r = run(f"""
    n = {size}
    b = filled(n, 0xAA)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    def in_child():
        seen = values(b)
        np.frombuffer(b, dtype=np.uint8)[:] = 0xBB
        os.write(w, b"x")
        os.read(r2, 1)                      # the parent has written 0xCC
        return {{"seen": seen, "after": values(b)}}
    # the child runs while the parent writes
    pid = os.fork()
    if pid == 0:
        out = in_child()
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.read(r, 1)                           # the child has written 0xBB
    after_child = values(b)
    np.frombuffer(b, dtype=np.uint8)[:] = 0xCC
    os.write(w2, b"x")
    _, status = os.waitpid(pid, 0)
    child_out = json.loads(os.read(r, 1 << 16))
    print(json.dumps({{"parent_after_child_write": after_child, "parent_final": values(b),
                       "child": child_out, "status": status}}))
    """)
    assert r["status"] == 0, r
    assert r["child"]["seen"] == [0xAA], r
    assert r["parent_after_child_write"] == [0xAA], r   # the child's write stayed in the child
    assert r["child"]["after"] == [0xBB], r             # the parent's later write stayed in the parent
    assert r["parent_final"] == [0xCC], r


def test_child_reads_tables_made_before_the_fork_and_allocates_its_own():
    r = run(r"""
    with z.scope():
        t = pa.table({"x": pa.array(np.arange(1_000_000, dtype=np.int64)) * 3})
    small = pa.array(range(100), memory_pool=POOL)
    def in_child():
        ok = pc.sum(t["x"]).as_py() == 3 * sum(range(1_000_000)) and small.to_pylist() == list(range(100))
        # new allocations never land in the inherited segments
        fresh = [filled(n, 7) for n in (64, 5000, 1 << 20)]
        with z.scope():
            u = pa.table({"y": pc.add(t["x"], 1)})
        ok = ok and all(values(f) == [7] for f in fresh)
        ok = ok and pc.sum(u["y"]).as_py() == 3 * sum(range(1_000_000)) + 1_000_000
        ok = ok and pc.sum(t["x"]).as_py() == 3 * sum(range(1_000_000))
        return ok
    out = child(in_child)
    out["parent_still"] = pc.sum(t["x"]).as_py() == 3 * sum(range(1_000_000))
    print(json.dumps(out))
    """)
    assert r == {"ok": True, "parent_still": True}, r


def test_parent_sends_a_table_made_before_the_fork_while_the_child_lives():
    # The README's order: build the table, fork a consumer, send (sealed) to it.
    r = run(r"""
    with z.scope():
        t = pa.table({"x": pc.multiply(pa.array(np.arange(1_000_000, dtype=np.int64)), 1)})
    a, b = z.Channel.pair()
    pid = os.fork()
    if pid == 0:
        a.close()
        try:
            got = b.recv()
            b.send(pa.table({"sum": [pc.sum(got["x"]).as_py()]}))
        finally:
            os._exit(0)
    b.close()
    s = a.send(t)                                       # seal=True
    back = a.recv()
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"sum": back["sum"][0].as_py(), "copied": s.bytes_copied,
                      "zero_copy": s.bytes_zero_copy == t.nbytes, "status": status}))
    """)
    assert r == {"sum": sum(range(1_000_000)), "copied": 0, "zero_copy": True, "status": 0}, r


def test_child_shares_its_own_tables_and_copies_inherited_buffers_once():
    r = run(r"""
    with z.scope():
        t = pa.table({"x": pc.multiply(pa.array(np.arange(100_000, dtype=np.int64)), 1)})
    def in_child():
        with z.scope():
            u = pa.table({"y": pc.multiply(t["x"], 2)})
        own = z.share(u)                                   # sealed, zero-copy
        mixed = z.share(pa.table({"x": t["x"], "y": u["y"]}))
        # a child-private write to an inherited buffer is what a reader sees
        ctypes.memset(t["x"].chunks[0].buffers()[1].address, 0xFF, 5 * 8)
        written = z.share(t, seal=False)
        got = z.attach(written.descriptor, written.fds)
        return {"own": [own.bytes_copied, own.bytes_zero_copy == u.nbytes,
                        z.attach(own.descriptor, own.fds).equals(u)],
                "mixed": [mixed.bytes_copied == t.nbytes, mixed.bytes_zero_copy == u.nbytes],
                "written": [written.bytes_copied == t.nbytes, got["x"][:6].to_pylist()]}
    out = child(in_child)
    out["parent"] = t["x"][:6].to_pylist()
    print(json.dumps(out))
    """)
    assert r["ok"]["own"] == [0, True, True], r
    assert r["ok"]["mixed"] == [True, True], r
    assert r["ok"]["written"] == [True, [-1] * 5 + [5]], r
    assert r["parent"] == [0, 1, 2, 3, 4, 5], r


def test_child_keeps_what_it_inherited_when_the_parent_frees_and_reuses_memory():
    # A forked child's view of its parent's buffers must not change, whatever the
    # parent does with that memory afterwards (as with any allocator's fork): the
    # child reads pages it has not written from the file, so the parent may not
    # reuse or punch memory it frees in a heap the child maps until the child is gone.
    r = run(r"""
    N = 2_000_000
    src = pa.array(np.arange(N, dtype=np.int64))
    big = pc.multiply(src, 3, memory_pool=POOL)
    small = [filled(200, 7) for _ in range(100)]
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(go_r, 1)                  # the parent has freed both and written anew
        ok = pc.all(pc.equal(big, pc.multiply(src, 3))).as_py()
        ok = ok and all(values(b) == [7] for b in small)
        os._exit(0 if ok else 1)
    del big, small
    again = [filled(8 * N, 0xEE)] + [filled(200, 0xEE) for _ in range(100)]
    lent = z.stats()["lent_segments"]      # the emptied heap waits for the child
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"child_ok": os.waitstatus_to_exitcode(status) == 0, "lent": lent}))
    """)
    assert r == {"child_ok": True, "lent": 1}, r


def test_parent_reclaims_a_lent_segment_only_once_the_child_lets_go():
    # The child maps inherited segments through a description of its own, so the
    # parent's lease check sees it: a segment the parent shared unsealed and then
    # emptied stays lent (not reused under the child's copy of t) until the child exits.
    r = run(r"""
    src = pa.array(np.arange(1_000_000, dtype=np.int64))
    with z.scope():
        t = pa.table({"x": pc.multiply(src, 1)})
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.read(go_r, 1)                   # the parent has lent t's segment and allocated anew
        os._exit(0 if pc.sum(t["x"]).as_py() == sum(range(1_000_000)) else 1)
    z.share(t, seal=False).close()
    del t
    lent = z.stats()["lent_segments"]
    with z.scope():
        u = pa.table({"y": pc.multiply(src, 7)})
    during = z.stats()["segments_reclaimed"]
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    with z.scope():
        v = pa.table({"y": pc.multiply(src, 9)})
    print(json.dumps({"lent": lent, "during": during, "after": z.stats()["segments_reclaimed"],
                      "child_ok": status == 0}))
    """)
    assert r == {"lent": 1, "during": 0, "after": 1, "child_ok": True}, r


def test_parent_and_child_never_carve_the_same_memory():
    # Before the fork the pool holds a spare segment and a live table; after it,
    # parent and child both allocate and write. Had they carved the same free
    # memory, one would see the other's values.
    r = run(r"""
    N = 1_000_000
    src = pa.array(np.arange(N, dtype=np.int64))
    def made(seed):
        with z.scope():
            return pa.table({"x": pc.add(src, seed)})
    t0 = made(0)
    tmp = made(1); del tmp                         # its segment becomes a spare
    r_fd, w_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        u = made(5)
        os.read(r_fd, 1)                           # the parent has written v
        ok = pc.all(pc.equal(u["x"], pc.add(src, 5))).as_py()
        ok = ok and pc.all(pc.equal(t0["x"], src)).as_py()
        os._exit(0 if ok else 1)
    v = made(9)
    os.write(w_fd, b"x")
    _, status = os.waitpid(pid, 0)
    out = {"child_ok": os.waitstatus_to_exitcode(status) == 0,
           "parent_ok": pc.all(pc.equal(v["x"], pc.add(src, 9))).as_py()}
    sh = z.share(t0)
    out["shared_back"] = z.attach(sh.descriptor, sh.fds).equals(t0)
    print(json.dumps(out))
    """)
    assert r == {"child_ok": True, "parent_ok": True, "shared_back": True}, r


def _readme_use_code():
    """The python code blocks of the README's "Use" section, in order, verbatim."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Use\n(.*?)^## ", text, re.S | re.M).group(1)
    blocks = re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)
    assert len(blocks) >= 2, "the README's Use section lost its code"
    return "\n".join(blocks)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_readme_use_example_runs_as_written(tmp_path, method):
    script = tmp_path / "readme_use.py"
    # Only the start method is chosen here; the rest is the README's text.
    script.write_text(f"import multiprocessing\nmultiprocessing.set_start_method({method!r}, force=True)\n"
                      + _readme_use_code())
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=180)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the README example hung under {method!r}: {e.stdout!r} {e.stderr!r}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    share = re.search(r"ShareCounters\(nbytes=(\d+), .*bytes_zero_copy=(\d+), bytes_copied=0,", out)
    assert share and share.group(1) == share.group(2), out
    assert str(2 * sum(range(10_000_000))) in out, out
