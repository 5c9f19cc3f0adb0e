"""A self-contained pipeline: writes a small Parquet file, then runs a DAG on it.

    python examples/quickstart.py            # Python API
    zerrow run examples/quickstart.py        # CLI (uses the file written by a previous run)

Nodes are module-level functions; parameter names are upstream node names.
"""
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from zerrow_pool import pipeline as zp

DATA = os.path.join(tempfile.gettempdir(), "zerrow-quickstart.parquet")

sales = zp.parquet("sales", DATA, columns=["store", "amount", "qty"], filter=pc.field("qty") > 0)


@zp.node
def priced(sales):
    """Adds one column: the input columns are passed on without copying."""
    return sales.append_column("unit_price", pc.divide(sales["amount"], sales["qty"]))


@zp.node(retries=1)
def per_store(priced):
    return priced.group_by("store").aggregate([("amount", "sum"), ("unit_price", "mean")])


@zp.node
def big_tickets(priced):
    return priced.filter(pc.field("amount") > 900)


pipeline = zp.Pipeline("quickstart", [sales, priced, per_store, big_tickets])


def write_data(rows=1_000_000):
    rng = np.random.default_rng(7)
    pq.write_table(pa.table({"store": rng.integers(0, 50, rows), "amount": rng.uniform(0, 1000, rows),
                             "qty": rng.integers(0, 5, rows)}), DATA)


if __name__ == "__main__":
    write_data()
    transport = "zerrow" if zp.zerrow_available() else "copy"
    with zp.Runtime(workers=2, transport=transport) as rt:
        result = rt.run(pipeline)
    print(result.report.format())
    print(result["per_store"].sort_by("store").slice(0, 5))
