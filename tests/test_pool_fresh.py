"""Fresh memory: large allocations from never-touched segment pages are populated
in one call (MADV_POPULATE_WRITE) instead of faulting in page by page as they are
written; small ones are not, since Arrow often writes only part of them.

Each case runs in a fresh process, so the pool has no resident memory to reuse,
and measures the process's RssShmem (memfd pages mapped here), which the pool
cannot fake.
"""

import json
import os

import pytest

from conftest import run_python

MiB = 1 << 20

PROBE = """
import json
import numpy as np
import pyarrow as pa
import zerrow_pool

from conftest import rss_shmem

pool = zerrow_pool.pool()
pa.allocate_buffer(64, memory_pool=pool)  # the first segment and its first slab exist
before = rss_shmem()
buf = pa.allocate_buffer({size}, memory_pool=pool)
grown = rss_shmem() - before
view = np.frombuffer(buf, dtype=np.uint8)
zeros = not view.any()
view[:] = 7
print(json.dumps({{"grown": grown, "zeros": zeros, "written": bool((view == 7).all())}}))
"""


def _fresh_allocation(size, **env):
    full = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    full.pop("ZERROW_POPULATE_MIN", None)
    full.pop("ZERROW_POPULATE_MAX", None)
    full.update(env)
    return json.loads(run_python(PROBE.format(size=size), env=full))


def test_large_fresh_allocation_is_populated_before_it_is_written():
    out = _fresh_allocation(64 * MiB)
    assert out["grown"] >= 64 * MiB, out
    assert out["zeros"] and out["written"]


@pytest.mark.parametrize("size", [1 * MiB, 8 * MiB])
def test_small_fresh_allocation_is_left_to_fault_in(size):
    out = _fresh_allocation(size)
    assert out["grown"] < size // 4, out
    assert out["zeros"] and out["written"]


def test_population_can_be_turned_off():
    out = _fresh_allocation(64 * MiB, ZERROW_POPULATE_MIN="0")
    assert out["grown"] < MiB, out


def test_population_stops_at_the_cap():
    # A reserve far larger than what is written pays for at most the cap.
    out = _fresh_allocation(200 * MiB, ZERROW_POPULATE_MAX="32M")
    assert 32 * MiB <= out["grown"] < 40 * MiB, out
    assert out["zeros"] and out["written"]


def test_reallocation_growth_is_left_to_fault_in():
    # Arrow's builders grow by reallocating to twice the size and write only
    # part of the last step: a grown copy is not populated.
    code = """
import json
import pyarrow as pa
import zerrow_pool
from conftest import rss_shmem

pool = zerrow_pool.pool()
buf = pa.allocate_buffer(2 << 20, memory_pool=pool, resizable=True)
fence = pa.allocate_buffer(1 << 20, memory_pool=pool)  # no room to grow in place
copied = zerrow_pool.stats()["realloc_copied"]
before = rss_shmem()
buf.resize(64 << 20)
print(json.dumps({"grown": rss_shmem() - before, "copies": zerrow_pool.stats()["realloc_copied"] - copied}))
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = json.loads(run_python(code, env=env))
    assert out["copies"] == 1, out
    assert out["grown"] < 8 * MiB, out


def test_small_allocations_reuse_resident_memory_before_fresh_pages():
    # A long resident free run (a freed 32 MiB buffer) serves later small
    # allocations: a warm loop of small batches must not fault in fresh pages
    # every round while memory it already touched lies free.
    code = """
import json
import numpy as np
import pyarrow as pa
import zerrow_pool
from conftest import rss_shmem

pool = zerrow_pool.pool()
left = pa.allocate_buffer(1 << 20, memory_pool=pool)
mid = pa.allocate_buffer(32 << 20, memory_pool=pool)
np.frombuffer(mid, dtype=np.uint8)[:] = 1
right = pa.allocate_buffer(1 << 20, memory_pool=pool)  # mid's run cannot merge with fresh pages
del mid
before = rss_shmem()
small = [pa.allocate_buffer(8 << 10, memory_pool=pool) for _ in range(1000)]
for b in small:
    np.frombuffer(b, dtype=np.uint8)[:] = 2
print(json.dumps({"grown": rss_shmem() - before, "retained": zerrow_pool.stats()["bytes_retained"]}))
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = json.loads(run_python(code, env=env))
    assert out["grown"] < MiB, out
