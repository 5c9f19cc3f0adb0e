"""Which dataframe conversions copy: nodes written for each library, measured.

    python bench/dataframes.py [ROWS] [--write docs/DATAFRAMES.md]

Each case is a node over a Parquet source (int64, int32, two float64 and a
string column), run with the zerrow transport in one warm worker.  Per case
the node record gives:

- ``bytes_copied``: bytes zerrow had to copy to share the node's result, because
  they lay outside the zerrow pool and the node's inputs (memory of the
  library's own allocator, e.g. Polars' or NumPy's);
- ``bytes_zero_copy``: bytes shared in place (new Arrow buffers in the pool, or
  input buffers passed through);
- ``pool peak``: the most the worker's zerrow pool held while the node ran,
  which shows copies that Arrow itself made (into the pool) converting the
  inputs or the result.

"pass-through" cases return their input unchanged in the library's own type
(so any byte copied was copied by the conversions in and out); "new column"
cases add ``amount * 2``.  Deterministic byte counts, not timings.
"""
from __future__ import annotations

import os
import sys
import tempfile

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.testing import make_parquet


@zp.node
def arrow_pass(src):
    return src


@zp.node
def arrow_new(src):
    return src.append_column("y", pc.multiply(src["amount"], 2))


@zp.node(inputs_as="polars")
def polars_pass(src):
    return src


@zp.node(inputs_as="polars")
def polars_new(src):
    return src.with_columns((pl.col("amount") * 2).alias("y"))


@zp.node
def polars_numeric_pass(src: pl.DataFrame):
    return src.select("key", "grp", "value", "amount")


@zp.node(inputs_as="pandas")
def pandas_pass(src):
    return src


@zp.node(inputs_as="pandas")
def pandas_new(src):
    return src.assign(y=src["amount"] * 2)


@zp.node
def pandas_numpy_pass(src):
    return src.to_pandas()


@zp.node
def pandas_numpy_new(src):
    df = src.to_pandas()
    df["y"] = df["amount"] * 2
    return df


@zp.node
def duckdb_pass(src):
    return duckdb.sql("select * from src")


@zp.node
def duckdb_new(src):
    return duckdb.sql("select *, amount * 2 as y from src")


@zp.node
def reader_pass(src):
    return pa.RecordBatchReader.from_batches(src.schema, src.to_batches())


@zp.node
def generator_pass(src):
    yield from src.to_batches()


CASES = [
    ("pyarrow Table", "pass-through", arrow_pass),
    ("pyarrow Table", "new column", arrow_new),
    ("RecordBatchReader", "pass-through", reader_pass),
    ("generator of batches", "pass-through", generator_pass),
    ('Polars (`inputs_as="polars"`)', "pass-through", polars_pass),
    ('Polars (`inputs_as="polars"`)', "numeric columns only", polars_numeric_pass),
    ('Polars (`inputs_as="polars"`)', "new column", polars_new),
    ('pandas (`inputs_as="pandas"`, Arrow dtypes)', "pass-through", pandas_pass),
    ('pandas (`inputs_as="pandas"`, Arrow dtypes)', "new column", pandas_new),
    ("pandas, NumPy dtypes (`table.to_pandas()`)", "pass-through", pandas_numpy_pass),
    ("pandas, NumPy dtypes (`table.to_pandas()`)", "new column", pandas_numpy_new),
    ("DuckDB relation", "pass-through", duckdb_pass),
    ("DuckDB relation", "new column", duckdb_new),
]


def measure(rows: int) -> tuple[list, int]:
    with tempfile.TemporaryDirectory() as d:
        path = make_parquet(os.path.join(d, "d.parquet"), rows=rows, row_group_size=rows)
        src = zp.parquet("src", path)
        out = []
        with zp.Runtime(workers=1, transport="zerrow") as rt:
            rt.run(zp.Pipeline("warm", [src, arrow_pass]), outputs=())
            input_bytes = rt.run(zp.Pipeline("in", [src])).report.node("src").bytes
            for lib, what, node in CASES:
                rec = rt.run(zp.Pipeline(node.name, [src, node]), outputs=()).report.node(node.name)
                out.append((lib, what, rec))
    return out, input_bytes


def fmt(n: int) -> str:
    return "0" if n == 0 else zp.fmt_bytes(n)


def table(results, rows: int, input_bytes: int) -> str:
    lines = [f"Input: {rows:,} rows, {fmt(input_bytes)} (`key` int64, `grp` int32, `value` and "
             "`amount` float64, `label` string). Versions: "
             f"pyarrow {pa.__version__}, Polars {pl.__version__}, pandas {pd.__version__}, "
             f"DuckDB {duckdb.__version__}.", "",
             "| node written for | result | output bytes | shared zero-copy | copied to share "
             "| worker pool peak |",
             "|---|---|---:|---:|---:|---:|"]
    for lib, what, r in results:
        lines.append(f"| {lib} | {what} | {fmt(r.bytes)} | {fmt(r.bytes_zero_copy)} | {fmt(r.bytes_copied)} "
                     f"| {fmt(r.peak)} |")
    return "\n".join(lines)


def main(argv) -> None:
    rows = int(argv[0]) if argv and not argv[0].startswith("--") else 1_000_000
    results, input_bytes = measure(rows)
    text = table(results, rows, input_bytes)
    print(text)
    if "--write" in argv:
        path = argv[argv.index("--write") + 1]
        with open(path) as f:
            doc = f.read()
        start, end = doc.index("<!-- table -->") + len("<!-- table -->"), doc.index("<!-- /table -->")
        with open(path, "w") as f:
            f.write(doc[:start] + "\n" + text + "\n" + doc[end:])


if __name__ == "__main__":
    main(sys.argv[1:])
