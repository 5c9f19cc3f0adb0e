"""A pipeline whose source is spilled under a tight budget before a node passes
the source's columns on (tests/test_pipeline_budget.py, tests/test_service.py).

Its data: a Parquet file of ``zerrow_pool.pipeline.testing.make_parquet``, named
by ``$SPILL_TEST_DATA`` when it runs as a pipeline file.
"""
import os

import pyarrow.compute as pc

from zerrow_pool import pipeline as zp


@zp.node
def by_amount(src):
    return src.sort_by("amount")


@zp.node
def by_value(by_amount):
    return by_amount.sort_by("value")


@zp.node
def widened(src, by_value):
    """Passes its input's columns through, with one more."""
    return src.append_column("twice", pc.multiply(src["amount"], 2))


def build(path):
    return zp.Pipeline("pass_through", [zp.parquet("src", path), by_amount, by_value, widened])


if "SPILL_TEST_DATA" in os.environ:
    pipeline = build(os.environ["SPILL_TEST_DATA"])
