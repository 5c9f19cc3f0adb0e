"""Helpers for testing pipelines (used by zerrow's own tests; handy for yours).

``TRANSPORTS`` lists the transports to parametrize over: ``copy`` always,
``zerrow`` only once the compiled sharing layer exists.  ``zerrow_params()``
marks the zerrow case skipped, naming what is missing, until then.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import zerrow_api
from .machine_memory import meminfo


def zerrow_params():
    """pytest params for both transports, the zerrow one skipped (loudly named) if absent."""
    import pytest

    gone = zerrow_api.missing()
    reason = "zerrow sharing API not built yet: missing " + ", ".join(gone)
    return [pytest.param("copy", id="copy"),
            pytest.param("zerrow", id="zerrow", marks=pytest.mark.skipif(bool(gone), reason=reason))]


def require_zerrow():
    """Skip the calling test while the zerrow sharing API is missing."""
    import pytest

    gone = zerrow_api.missing()
    if gone:
        pytest.skip("zerrow sharing API not built yet: missing " + ", ".join(gone))


def make_parquet(path, rows: int = 10_000, row_group_size: int = 2_500, seed: int = 0) -> str:
    """A small deterministic fact table: key, group, value, amount, label."""
    rng = np.random.default_rng(seed)
    table = pa.table({
        "key": np.arange(rows, dtype=np.int64),
        "grp": rng.integers(0, 16, rows, dtype=np.int32),
        "value": rng.standard_normal(rows),
        "amount": rng.integers(0, 1000, rows).astype(np.float64),
        "label": pa.array([f"r{i % 97}" for i in range(rows)]),
    })
    path = os.fspath(path)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def shmem_bytes() -> int:
    """The system-wide ``Shmem`` figure of /proc/meminfo, in bytes."""
    return meminfo()["Shmem"] * 1024


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
