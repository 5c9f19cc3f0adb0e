"""Sharing memory zerrow did not allocate, through the kernel module.

These run inside a VM with the module loaded (tests/test_kmod_share_vm.py
boots it); elsewhere they skip.
"""

import multiprocessing as mp
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import zerrow_pool as zp

pytestmark = pytest.mark.skipif(not zp.kernel_module_available(),
                                reason="the zerrow kernel module is not loaded (/dev/zerrow)")

N = 2_000_000


def _numpy_table():
    return pa.table({"i": np.arange(N, dtype=np.int64), "f": np.linspace(0, 1, N)})


def _consumer(channel, reply):
    t = channel.recv()
    reply.send(pa.table({"sum_i": [pc.sum(t["i"]).as_py()], "sum_f": [pc.sum(t["f"]).as_py()],
                         "owns": [zp.owns(t)]}))
    channel.recv_share().close()  # wait until told to re-check
    reply.send(pa.table({"sum_i": [pc.sum(t["i"]).as_py()]}))


def test_numpy_table_is_shared_without_copy():
    t = _numpy_table()
    assert not zp.owns(t)
    s = zp.share(t)
    assert s.bytes_copied == 0
    assert s.bytes_zero_copy == s.nbytes == t.nbytes
    assert s.bytes_exposed <= 2 * 2 * os.sysconf("SC_PAGESIZE")  # edges of two buffers
    back = s.attach()
    assert back.equals(t)
    s.close()


def test_consumer_keeps_original_bytes_when_producer_writes_and_exits():
    ctx = mp.get_context("fork")
    a, b = zp.Channel.pair()
    ra, rb = zp.Channel.pair()
    i = np.arange(N, dtype=np.int64)
    t = pa.table({"i": i, "f": np.linspace(0, 1, N)})
    expected = int(i.sum())
    p = ctx.Process(target=_consumer, args=(b, rb))
    p.start()
    sent = a.send(t)
    assert sent.bytes_copied == 0
    first = ra.recv()
    assert first["sum_i"][0].as_py() == expected and first["owns"][0].as_py()
    # The producer writes to its array (and would reuse the memory after a free):
    # it gets a private copy; the consumer keeps the pinned original.
    before = zp.stats()["cow_bytes_copied"]
    i[:] = -1
    assert int(i.sum()) == -N
    assert zp.stats()["cow_bytes_copied"] > before
    del t, i
    a.send(pa.table({"x": [1]}))
    assert ra.recv()["sum_i"][0].as_py() == expected
    p.join(timeout=60)
    assert p.exitcode == 0


def _producer(channel):
    t = _numpy_table()
    channel.send(t)
    os.kill(os.getpid(), signal.SIGKILL)


def test_consumer_survives_producer_killed():
    ctx = mp.get_context("fork")
    a, b = zp.Channel.pair()
    p = ctx.Process(target=_producer, args=(b,))
    p.start()
    t = a.recv()
    p.join(timeout=60)
    assert p.exitcode == -signal.SIGKILL
    assert t.equals(_numpy_table())


def test_polars_and_duckdb_results_shared_without_copy():
    pl = pytest.importorskip("polars")
    duckdb = pytest.importorskip("duckdb")
    frames = {
        "polars": pl.DataFrame({"a": np.arange(N), "b": np.arange(N) * 2.0}).to_arrow(),
        "duckdb": duckdb.sql(f"select range as a, range * 2.0 as b from range({N})").arrow(),
    }
    for name, table in frames.items():
        if isinstance(table, pa.RecordBatchReader):
            table = table.read_all()
        big = table.combine_chunks() if name == "duckdb" else table
        s = zp.share(big)
        assert s.bytes_copied == 0, (name, s)
        assert s.attach().equals(big), name
        s.close()


def test_strict_exposure_copies_edges_and_exposes_nothing():
    t = pa.table({"i": np.arange(N, dtype=np.int64)})
    s = zp.share(t, strict_exposure=True)
    assert s.bytes_exposed == 0
    assert 0 < s.bytes_copied <= 2 * os.sysconf("SC_PAGESIZE")
    assert s.attach().equals(t)
    s.close()


def test_small_buffers_are_copied_and_counted():
    t = pa.table({"i": np.arange(100, dtype=np.int64)})
    s = zp.share(t)
    assert s.bytes_copied == t.nbytes
    s.close()


def test_a_kernel_module_share_spills_to_disk_and_back(tmp_path):
    """The pipeline spills a share segment by segment (``copy_extents``); a
    kernel-module file is copied through a mapping, and attaches back equal.
    (Its ``lseek`` ignores SEEK_DATA: reading extents from it once looped.)"""
    from zerrow_pool._sharing import mark_spilled, segment_kinds
    from zerrow_pool.pipeline import rundirs
    from zerrow_pool.pipeline.spill import copy_extents

    t = _numpy_table()
    copies = []
    with zp.share(t) as s:
        assert 2 in segment_kinds(s.descriptor), "expected kernel-module segments"
        for fd in s.fds:
            out = rundirs.anonymous_file(str(tmp_path))
            try:
                assert copy_extents(fd, out, mapped=True) > 0
                copies.append(rundirs.reopen_read_only(out))
            finally:
                os.close(out)
        spilled = mark_spilled(s.descriptor)
    try:
        assert zp.attach(spilled, copies, spill_files=True).equals(t)
    finally:
        for fd in copies:
            os.close(fd)
