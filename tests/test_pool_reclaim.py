"""Reclaiming shared segments: a segment shared with ``seal=False`` comes back
to the producer's pool once its buffers are freed there and no other process
holds the file (the kernel's lease check), and not a moment earlier.

Each scenario runs in a fresh interpreter (the pool and its counters are per
process) that starts its own reader process.
"""

import json
import os
import textwrap

import pytest

from conftest import run_python

PRELUDE = r"""
import json, os, resource, socket, subprocess, sys, textwrap
import numpy as np, pyarrow as pa, pyarrow.compute as pc
import zerrow_pool as z

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

SOURCES = {}

def made(n, seed):
    # allocated by Arrow in the zerrow pool (the numpy source is foreign memory,
    # made once so that its own page faults are not counted later)
    if n not in SOURCES:
        SOURCES[n] = pa.array(np.arange(n, dtype=np.int64))
    with z.scope():
        return pa.table({"x": pc.add(SOURCES[n], seed)})

def counters():
    s = z.stats()
    return {k: s[k] for k in ("segments", "lent_segments", "spare_segments", "segments_reclaimed")}

READER = textwrap.dedent('''
    import socket, sys, zerrow_pool as z, pyarrow.compute as pc
    s = socket.socket(fileno=int(sys.argv[1]))
    t = z.recv(s)
    print(pc.sum(t["x"]).as_py(), flush=True)
    for line in sys.stdin:           # "check": sum again; "drop": let go of the table
        if line.strip() == "drop":
            del t
            import gc; gc.collect()
            print("dropped", flush=True)
        else:
            print(pc.sum(t["x"]).as_py(), flush=True)
''')

class Reader:
    def __init__(self):
        a, b = socket.socketpair()
        self.sock = a
        self.proc = subprocess.Popen([sys.executable, "-c", READER, str(b.fileno())],
                                     pass_fds=[b.fileno()], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        b.close()
    def send(self, t, **kw):
        z.send(self.sock, t, **kw)
        return int(self.proc.stdout.readline())
    def ask(self, what):
        self.proc.stdin.write(what + "\n"); self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()
    def close(self):
        self.proc.stdin.close(); self.proc.wait(timeout=30); self.sock.close()
"""


def run(body, env=None):
    return json.loads(run_python(PRELUDE + textwrap.dedent(body),
                                 env=None if env is None else {**os.environ, **env}))


def test_segment_comes_back_only_after_the_reader_lets_go():
    r = run(r"""
    N = 4_000_000
    reader = Reader()
    t = made(N, 1)
    expect = reader.send(t, seal=False)
    del t
    out = {"lent": counters()}
    # churn while the reader still maps the segment: new memory, never the lent pages
    for i in range(3):
        u = made(N, 100 + i); del u
    out["reader_sum_kept"] = int(reader.ask("check")) == expect
    out["while_held"] = counters()
    reader.ask("drop")
    f0 = faults()
    u = made(N, 7)
    out["faults_after"] = faults() - f0
    out["after"] = counters()
    out["values"] = u["x"][0].as_py() == 7 and u["x"][N - 1].as_py() == N - 1 + 7
    reader.close()
    print(json.dumps(out))
    """)
    assert r["lent"]["lent_segments"] >= 1, r
    assert r["reader_sum_kept"], r
    assert r["while_held"]["segments_reclaimed"] == 0, r
    assert r["while_held"]["lent_segments"] >= 1, r
    assert r["after"]["segments_reclaimed"] >= 1, r
    assert r["values"], r


def test_reclaimed_memory_is_warm_with_keep_free():
    # 32 MB of int64 twice over: fresh shmem faults in ~8k pages for each
    r = run(r"""
    N = 4_000_000
    def one_round(reader, seed):
        t = made(N, seed)
        tmp = made(N, seed + 1); del tmp    # a temporary freed before the share
        reader.send(t, seal=False, keep_free=True)
        del t
        reader.ask("drop")
    out = {}
    made(N, 0)
    reader = Reader(); one_round(reader, 0); reader.close()
    f0 = faults()
    reader = Reader(); one_round(reader, 10); reader.close()
    out["faults_second"] = faults() - f0
    out["counters"] = counters()
    print(json.dumps(out))
    """)
    assert r["counters"]["segments_reclaimed"] >= 1, r
    # both tables and the temporary reuse the first round's pages
    assert r["faults_second"] < 2000, r


@pytest.mark.parametrize("hold", ["fd", "fd_in_flight"])
def test_an_open_fd_alone_keeps_the_segment_lent(hold):
    r = run(r"""
    import array
    hold = %r
    t = made(1_000_000, 3)
    sh = z.share(t, seal=False)
    del t
    a, b = socket.socketpair()
    if hold == "fd_in_flight":  # sent, never received
        socket.send_fds(a, [b"x"], list(sh.fds))
    kept = os.dup(sh.fds[0]) if hold == "fd" else None
    sh.close()
    u = made(1_000_000, 4); del u
    before = counters()
    if kept is not None:
        os.close(kept)
    else:
        b.close(); a.close()
    u = made(1_000_000, 5); del u
    print(json.dumps({"before": before, "after": counters()}))
    """ % hold)
    assert r["before"]["segments_reclaimed"] == 0 and r["before"]["lent_segments"] >= 1, r
    assert r["after"]["segments_reclaimed"] >= 1, r


def test_sealed_segments_are_never_reused():
    r = run(r"""
    reader = Reader()
    t = made(1_000_000, 1)
    reader.send(t, seal=True)
    del t
    reader.ask("drop"); reader.close()
    u = made(1_000_000, 2); del u
    print(json.dumps(counters()))
    """)
    assert r["segments_reclaimed"] == 0 and r["lent_segments"] == 0, r


def test_release_unused_lets_lent_segments_go():
    r = run(r"""
    reader = Reader()
    t = made(1_000_000, 1)
    reader.send(t, seal=False)
    del t
    held = counters()
    z.release_unused()
    after = counters()
    ok = int(reader.ask("check")) > 0   # the reader's copy of the pages is untouched
    reader.close()
    print(json.dumps({"held": held, "after": after, "reader_ok": ok}))
    """)
    assert r["held"]["lent_segments"] >= 1, r
    assert r["after"]["lent_segments"] == 0 and r["after"]["spare_segments"] == 0, r
    assert r["reader_ok"], r


def test_spare_budget_reads_size_suffixes():
    # a reclaimed segment is kept warm only within ZERROW_SPARE_BYTES: "1K" keeps
    # none of its 16 MB, "1G" keeps it (a suffix misread would fall back to the default)
    body = r"""
    N = 2_000_000
    made(N, 0)
    reader = Reader()
    t = made(N, 1)
    reader.send(t, seal=False, keep_free=True)
    del t
    reader.ask("drop"); reader.close()
    f0 = faults()
    u = made(N, 2)
    print(json.dumps({"faults": faults() - f0, **counters()}))
    """
    tight = run(body, env={"ZERROW_SPARE_BYTES": "1K"})
    roomy = run(body, env={"ZERROW_SPARE_BYTES": "1G"})
    assert tight["segments_reclaimed"] >= 1 and roomy["segments_reclaimed"] >= 1, (tight, roomy)
    assert tight["faults"] > 3000, tight   # 16 MB of fresh pages
    assert roomy["faults"] < 1500, roomy


def test_a_scope_with_expected_bytes_takes_one_spare_that_fits_it():
    """Without a hint a scope's first slab takes the coldest spare and each
    large allocation the smallest warm run that fits it, which scatters the
    scope over every warm spare (and, once its buffers are shared, strands
    the rest of each). With ``expected_bytes`` the scope takes the one spare
    that covers it and leaves the others whole."""
    body = r"""
    SMALL, BIG, PART = 6_000_000, 25_000_000, 5_000_000   # int64s: 48, 200 and 40 MB
    src = {n: pa.array(np.arange(n, dtype=np.int64)) for n in (SMALL, BIG, PART)}
    def made(n, seed):
        with z.scope():
            return pc.add(src[n], seed)
    small, big = made(SMALL, 1), made(BIG, 1)   # two warm spares once freed
    del small, big
    out = {"spares_before": z.stats()["spare_segments"]}
    f0 = faults()
    with z.scope(expected_bytes=EXPECTED):
        parts = [pc.add(src[PART], i) for i in range(4)]
        out["spares_during"] = z.stats()["spare_segments"]
    out["faults"] = faults() - f0
    del parts
    f1 = faults()
    out["rows"] = len(made(SMALL, 2))   # the small spare's pages, warm either way
    out["faults_small"] = faults() - f1
    try:
        with z.scope(expected_bytes=-1):
            pass
    except ValueError as e:
        out["negative"] = str(e)
    print(json.dumps(out))
    """
    hinted = run(body.replace("EXPECTED", str(4 * 5_000_000 * 8)))
    unhinted = run(body.replace("EXPECTED", "0"))
    for r in (hinted, unhinted):
        assert r["spares_before"] == 2, r
        assert r["faults"] < 2000, r   # 160 MB from warm pages (fresh ones: ~40k faults)
        assert r["faults_small"] < 2000 and r["rows"] == 6_000_000, r
        assert "expected_bytes must be >= 0" in r["negative"]
    assert hinted["spares_during"] == 1, hinted    # the big one alone
    assert unhinted["spares_during"] == 0, unhinted  # both: the scope is scattered


def test_a_small_hinted_scope_leaves_a_much_warmer_spare_alone():
    """A scope that expects little takes a new segment rather than a spare
    far warmer than it needs: shared with the scope's output, that spare's
    warm memory would be stranded (or, under a memory budget, punched)."""
    r = run(r"""
    src = pa.array(np.arange(25_000_000, dtype=np.int64))
    with z.scope():
        big = pc.add(src, 1)
    del big                                   # a 200 MB warm spare
    small = pa.array(np.arange(100_000, dtype=np.int64))
    out = {"spares_before": z.stats()["spare_segments"]}
    with z.scope(expected_bytes=1 << 20):
        t = pc.add(small, 1)
        out["spares_during"] = z.stats()["spare_segments"]
    print(json.dumps(out))
    """)
    assert r["spares_before"] == 1 and r["spares_during"] == 1, r
