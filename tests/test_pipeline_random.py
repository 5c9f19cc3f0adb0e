"""Random DAG shapes: same results under both transports, nothing copied with zerrow."""
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline import zerrow_api
from zerrow_pool.pipeline.testing import make_parquet


def unary(a):
    """Keep a's columns, add one derived from the row count of the table."""
    return a.append_column(f"c{a.num_columns}", pc.add(a["key"], a.num_columns))


def binary(a, b):
    """a's columns plus b's last column (same row count along every path)."""
    return a.append_column(f"c{a.num_columns}", b.column(b.num_columns - 1))


def _build(shape, data):
    steps = [zp.parquet("src", data, columns=["key", "amount"])]
    names = ["src"]
    for i, ups in enumerate(shape):
        ups = [names[u % len(names)] for u in ups]
        if len(ups) == 1 or ups[0] == ups[1]:
            steps.append(zp.Node(unary, name=f"n{i}", inputs={"a": ups[0]}))
        else:
            steps.append(zp.Node(binary, name=f"n{i}", inputs={"a": ups[0], "b": ups[1]}))
        names.append(f"n{i}")
    return zp.Pipeline("random", steps)


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    data = make_parquet(tmp_path_factory.mktemp("rnd") / "d.parquet", rows=5_000, row_group_size=2_000)
    rts = {"copy": zp.Runtime(workers=2, transport="copy")}
    if zerrow_api.available():
        rts["zerrow"] = zp.Runtime(workers=2, transport="zerrow")
    yield data, rts
    for rt in rts.values():
        rt.close()


shapes = st.lists(st.lists(st.integers(0, 50), min_size=1, max_size=2), min_size=1, max_size=7)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes)
def test_random_dags(runtimes, shape):
    data, rts = runtimes
    p = _build(shape, data)
    results = {name: rt.run(p) for name, rt in rts.items()}
    base = results["copy"]
    for name, r in results.items():
        rep = r.report
        for s in p.order:  # every node started after all its inputs had finished
            rec = rep.node(s.name)
            for up in s.inputs:
                assert rep.node(up).end <= rec.start
        for sink in p.sinks:
            assert r[sink].equals(base[sink]), (name, sink)
        if name == "zerrow":
            assert rep.bytes_copied == 0, rep.format()
