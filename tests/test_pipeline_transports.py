"""Both transports give equal results; the zerrow transport reshares for real."""
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.testing import make_parquet, require_zerrow


@zp.node
def plus_col(src):
    """Returns its input plus one new column."""
    return src.append_column("double", pc.multiply(src["amount"], 2))


@zp.node
def sorted_(plus_col):
    return plus_col.sort_by([("grp", "ascending"), ("key", "descending")])


@zp.node
def kept(plus_col):
    return plus_col.filter(pc.field("value") > 0.5)


@zp.node
def stats(sorted_, kept):
    return pa.table({"rows": [sorted_.num_rows, kept.num_rows],
                     "sum": [pc.sum(sorted_["double"]).as_py(), pc.sum(kept["double"]).as_py()]})


@zp.node
def same(plus_col):
    return plus_col


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_parquet(tmp_path_factory.mktemp("tr") / "d.parquet", rows=30_000, row_group_size=7_000)


def _pipe(data):
    src = zp.parquet("src", data, columns=["key", "grp", "value", "amount", "label"],
                     filter=pc.field("grp") != 5)
    return zp.Pipeline("eq", [src, plus_col, sorted_, kept, stats, same])


def _run(transport, data, **kw):
    with zp.Runtime(workers=2, transport=transport, **kw) as rt:
        return rt.run(_pipe(data), outputs=["stats", "sorted_", "kept", "same"])


def test_equal_results_under_both_transports(data):
    require_zerrow()
    a, b = _run("copy", data), _run("zerrow", data)
    c = _run("zerrow", data, cache=False)
    for name in ("stats", "sorted_", "kept", "same"):
        assert a[name].equals(b[name]), name
        assert a[name].equals(c[name]), name


def test_add_column_reshares_input(data):
    require_zerrow()
    r = _run("zerrow", data)
    rep = r.report
    node = rep.node("plus_col")
    new_col = r["same"]["double"].nbytes
    # only the new column may be new memory; nothing of the input is copied
    assert node.bytes_copied == 0, rep.format()
    assert node.bytes_zero_copy >= node.bytes - 64
    assert rep.node("same").bytes_copied == 0
    assert rep.zero_copy_rate >= 0.99, rep.format()
    assert new_col < node.bytes / 3


def test_copy_transport_copies_everything(data):
    rep = _run("copy", data).report
    assert rep.zero_copy_rate == 0.0
    assert rep.bytes_copied >= rep.node("plus_col").bytes


def test_workers_run_with_preload_and_scope(data):
    require_zerrow()
    from zerrow_pool.pipeline import zerrow_api
    with zp.Runtime(workers=1, transport="zerrow") as rt:
        if zerrow_api.preload_library():
            assert all(w.preload_active for w in rt.pool.workers)
        r = rt.run(zp.Pipeline("pa", [zp.parquet("src", data), plus_col, same]), outputs=())
        assert r.report.node("same").bytes_copied == 0


def test_idle_worker_death_is_recovered(data):
    import os
    import signal
    import time
    with zp.Runtime(workers=1, transport="copy") as rt:
        w = rt.pool.workers[0]
        os.kill(w.pid, signal.SIGKILL)
        w.proc.wait()
        time.sleep(0.05)
        r = rt.run(_pipe(data), outputs=["stats"])
        assert r.ok and rt.pool.workers[0].pid != w.pid


@zp.node
def from_numpy(plus_col):
    """Builds a column on memory numpy owns: sharing must copy it, once."""
    import numpy as np

    arr = np.ascontiguousarray(plus_col["key"].to_numpy()) * 3
    return plus_col.append_column("triple", pa.array(arr))


def test_foreign_buffers_are_copied_and_reported(data):
    require_zerrow()
    with zp.Runtime(workers=1, transport="zerrow") as rt:
        r = rt.run(zp.Pipeline("np", [zp.parquet("src", data), plus_col, from_numpy]))
    rep = r.report
    node = rep.node("from_numpy")
    triple = r["from_numpy"]["triple"].nbytes
    assert triple <= node.bytes_copied <= triple + 4096, rep.format()  # only the numpy column
    assert node.bytes_zero_copy >= node.bytes - node.bytes_copied - 64
    assert rep.node("plus_col").bytes_copied == 0


def test_the_small_output_check_agrees_with_nbytes():
    """The worker's check whether an output is small (to copy it out of the
    node's segments) stops summing once past the limit; it must say what
    ``Table.nbytes <= limit`` says."""
    import numpy as np

    from zerrow_pool.pipeline.worker import _nbytes_at_most

    big = pa.table({"a": np.arange(1_000_000), "s": [str(i) for i in range(1_000_000)]})
    chunked = pa.concat_tables([big.slice(i * 10_000, 10_000) for i in range(100)])
    cases = [big, big.slice(5, 10), chunked, chunked.slice(0, 1), big.slice(0, 0),
             pa.table({"n": pa.nulls(10)}), pa.table({"x": pa.chunked_array([], pa.int64())})]
    for t in cases:
        for limit in (0, 100, 1 << 20, 1 << 30):
            assert _nbytes_at_most(t, limit) == (t.nbytes <= limit), (t.schema, t.num_rows, limit)
