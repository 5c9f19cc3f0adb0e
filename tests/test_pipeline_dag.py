"""DAG authoring, ordering, parallelism and warm-worker reuse."""
import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.testing import make_parquet


@zp.node
def slow_a(src):
    time.sleep(1.0)
    return src.select(["key"])


@zp.node
def slow_b(src):
    time.sleep(1.0)
    return src.select(["grp"])


@zp.node
def both(slow_a, slow_b):
    return pa.table({"n": [slow_a.num_rows + slow_b.num_rows]})


@zp.node
def positive(src):
    return src.filter(pc.field("value") > 0)


@zp.node
def total(positive):
    return pa.table({"amount": [pc.sum(positive["amount"]).as_py()]})


@zp.node(name="renamed", inputs={"t": "positive"})
def rename_step(t):
    return t.rename_columns([c.upper() for c in t.column_names])


def test_unknown_input_named():
    with pytest.raises(zp.PipelineDefinitionError, match="names no node"):
        zp.Pipeline("p", [positive])


def test_local_function_rejected():
    with pytest.raises(zp.PipelineDefinitionError, match="module level"):
        @zp.node
        def local(src):
            return src


@zp.node
def cyc_a(cyc_b):
    return cyc_b


@zp.node
def cyc_b(cyc_a):
    return cyc_a


def test_cycle_detected():
    with pytest.raises(zp.PipelineDefinitionError, match="cycle: cyc_a -> cyc_b -> cyc_a"):
        zp.Pipeline("cyc", [cyc_a, cyc_b])


def test_topological_order(tmp_path):
    src = zp.parquet("src", tmp_path / "x.parquet")
    p = zp.Pipeline("p", [total, positive, rename_step, src])
    order = [s.name for s in p.order]
    assert order.index("src") < order.index("positive") < order.index("total")
    assert order.index("positive") < order.index("renamed")
    assert set(p.sinks) == {"total", "renamed"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_parquet(tmp_path_factory.mktemp("dag") / "d.parquet", rows=4000, row_group_size=1000)


def test_parallel_and_results(data):
    p = zp.Pipeline("par", [zp.parquet("src", data), slow_a, slow_b, both])
    with zp.Runtime(workers=2, transport="copy") as rt:
        r = rt.run(p)
        a, b = r.report.node("slow_a"), r.report.node("slow_b")
        assert a.start < b.end and b.start < a.end, "independent nodes did not overlap"
        assert r["both"]["n"][0].as_py() == 8000
        pids = {w.pid for w in rt.pool.workers}
        r2 = rt.run(p)
        assert {w.pid for w in rt.pool.workers} == pids, "workers were not reused"
        assert r2.report.wall_s < 3.0


def test_filter_pushdown_and_columns(data):
    src = zp.parquet("src", data, columns=["key", "value", "amount"], filter=pc.field("grp") == 3)
    p = zp.Pipeline("push", [src, positive, total, rename_step])
    with zp.Runtime(workers=2, transport="copy") as rt:
        r = rt.run(p)
    import pyarrow.parquet as pq
    t = pq.read_table(data)
    exp = t.filter(pc.and_(pc.equal(t["grp"], 3), pc.greater(t["value"], 0)))
    assert r["total"]["amount"][0].as_py() == pytest.approx(pc.sum(exp["amount"]).as_py())
    assert r["renamed"].column_names == ["KEY", "VALUE", "AMOUNT"]
