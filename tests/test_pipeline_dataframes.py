"""Nodes written for Polars, pandas, DuckDB, record batch readers and generators."""
from __future__ import annotations

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.testing import make_parquet, zerrow_params


@zp.node
def as_polars_out(src):
    return pl.from_arrow(src).with_columns((pl.col("amount") * 2).alias("twice"))


@zp.node
def as_pandas_out(src):
    df = src.select(["key", "amount"]).to_pandas()
    df["twice"] = df["amount"] * 2
    return df


@zp.node
def as_duckdb_out(src):
    return duckdb.sql("select key, amount * 2 as twice from src")


@zp.node
def as_reader_out(src):
    return pa.RecordBatchReader.from_batches(src.schema, src.to_batches())


@zp.node
def as_generator_out(src):
    for batch in src.to_batches(max_chunksize=3000):
        yield batch.filter(pc.greater(batch["amount"], 500))


@zp.node(inputs_as="polars")
def polars_in(src):
    assert isinstance(src, pl.DataFrame), type(src)
    return src.filter(pl.col("amount") > 500).select("key", "amount")


@zp.node
def pandas_annotated(src: pd.DataFrame, polars_in: "pl.DataFrame"):
    assert isinstance(src, pd.DataFrame), type(src)
    assert isinstance(polars_in, pl.DataFrame), type(polars_in)
    return src[src["amount"] > 500][["key", "amount"]]


@zp.node
def returns_dict(src):
    return {"key": [1, 2]}


@zp.node
def returns_lazy(src):
    return pl.from_arrow(src).lazy()


@zp.node
def yields_junk(src):
    yield src.to_batches()[0]
    yield 42


def test_input_kinds_from_decorator_and_annotations():
    assert polars_in.inputs_as == ("polars",)
    assert pandas_annotated.inputs_as == ("pandas", "polars")
    assert as_polars_out.inputs_as == ("arrow",)
    with pytest.raises(ValueError, match="inputs_as='spark'"):
        zp.node(lambda src: src, inputs_as="spark")
    with pytest.raises(zp.PipelineDefinitionError, match="not parameters"):
        zp.node(lambda src: src, inputs_as={"nope": "polars"})


def test_unusable_return_annotation_fails_at_definition():
    def summary(src) -> dict:
        return {}
    with pytest.raises(zp.PipelineDefinitionError, match="annotated to return dict"):
        zp.node(summary)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_parquet(tmp_path_factory.mktemp("frames") / "d.parquet", rows=12_000)


@pytest.fixture(scope="module", params=zerrow_params())
def rt(request):
    with zp.Runtime(workers=2, transport=request.param) as runtime:
        yield runtime


def test_dataframe_outputs_accepted(rt, data):
    steps = [zp.parquet("src", data), as_polars_out, as_pandas_out, as_duckdb_out,
             as_reader_out, as_generator_out]
    res = rt.run(zp.Pipeline("frames", steps))
    src = pq.read_table(data)
    twice = pc.multiply(src["amount"], 2)
    assert res["as_polars_out"]["twice"].to_pylist() == twice.to_pylist()
    assert res["as_pandas_out"]["twice"].to_pylist() == twice.to_pylist()
    assert sorted(res["as_duckdb_out"]["twice"].to_pylist()) == sorted(twice.to_pylist())
    assert res["as_reader_out"].equals(src)
    expected = src.filter(pc.greater(src["amount"], 500))
    assert res["as_generator_out"].num_rows == expected.num_rows
    for name in ("as_polars_out", "as_pandas_out", "as_duckdb_out", "as_generator_out"):
        assert res.report.node(name).status == "done"


def test_inputs_as_polars_and_pandas(rt, data):
    res = rt.run(zp.Pipeline("in", [zp.parquet("src", data), polars_in, pandas_annotated]))
    a = res["pandas_annotated"]
    assert a.num_rows > 0 and set(a.column_names) >= {"key", "amount"}
    assert pc.all(pc.greater(a["amount"], 500)).as_py()


def test_unusable_output_names_node_type_and_accepted(rt, data):
    res = rt.run(zp.Pipeline("bad", [zp.parquet("src", data), returns_dict, yields_junk,
                                      returns_lazy]), raise_on_error=False)
    err = res.report.node("returns_dict").error
    assert "node 'returns_dict' returned dict" in err
    assert "__arrow_c_stream__" in err and "RecordBatchReader" in err
    assert "Traceback" not in err and "zerrow_pool" not in err
    err = res.report.node("yields_junk").error
    assert "item 1 is int" in err and "Traceback" not in err
    assert "polars.lazyframe.frame.LazyFrame (a lazy query: return its .collect())" in \
        res.report.node("returns_lazy").error

