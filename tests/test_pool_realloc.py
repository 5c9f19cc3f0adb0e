"""Reallocation: growth and shrink keep contents; in-place vs copied counters."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

import zerrow_pool

POOL = zerrow_pool.pool()


def _fill(buf, seed):
    a = np.frombuffer(buf, dtype=np.uint8)
    a[:] = (np.arange(a.size, dtype=np.uint32) * 31 + seed).astype(np.uint8)


def _expect(buf, n, seed):
    a = np.frombuffer(buf, dtype=np.uint8)[:n]
    return (a == (np.arange(n, dtype=np.uint32) * 31 + seed).astype(np.uint8)).all()


def _realloc_counts():
    s = zerrow_pool.stats()
    return s["realloc_in_place"], s["realloc_copied"]


@pytest.mark.parametrize("start,sizes", [
    (10, [100, 1000, 5000, 30_000, 33_000, 200_000, 5 << 20]),  # small -> large, growing
    (5 << 20, [1 << 20, 40_000, 20_000, 500, 1]),                # large -> small, shrinking
    (100, [120, 60, 128, 64]),                                   # within one size class
])
def test_resize_keeps_prefix(start, sizes):
    r = pa.allocate_buffer(start, memory_pool=POOL, resizable=True)
    _fill(r, 3)
    kept = start
    for n in sizes:
        r.resize(n, shrink_to_fit=True)
        assert r.size == n
        assert r.address % 64 == 0
        assert zerrow_pool.owns(r)
        kept = min(kept, n)
        assert _expect(r, kept, 3)
        # Newly exposed bytes are writable.
        np.frombuffer(r, dtype=np.uint8)[kept:] = (np.arange(n - kept, dtype=np.uint32) * 31 + 3 + kept * 31).astype(np.uint8)
        kept = n


def test_large_growth_in_place_when_next_pages_free():
    # A fresh large extent at the end of the free space can grow into its neighbour.
    ip0, cp0 = _realloc_counts()
    with zerrow_pool.scope():  # a fresh arena: free space follows the first extent
        r = pa.allocate_buffer(64 << 10, resizable=True)
        _fill(r, 9)
        addr = r.address
        grown = 0
        for n in (128 << 10, 1 << 20, 4 << 20):
            r.resize(n)
            grown += r.address == addr
    ip, cp = _realloc_counts()
    assert ip - ip0 + cp - cp0 == 3
    assert ip - ip0 == grown
    assert grown == 3, "large growth into free pages was not done in place"
    assert _expect(r, 64 << 10, 9)


def test_blocked_growth_is_copied():
    r = pa.allocate_buffer(64 << 10, memory_pool=POOL, resizable=True)
    _fill(r, 1)
    # The extent straight after r is taken, so r cannot grow where it is.
    blocker = pa.allocate_buffer(64 << 10, memory_pool=POOL)
    ip0, cp0 = _realloc_counts()
    addr = r.address
    r.resize(256 << 10)
    ip, cp = _realloc_counts()
    if r.address == addr:
        assert (ip - ip0, cp - cp0) == (1, 0)
    else:
        assert (ip - ip0, cp - cp0) == (0, 1)
    assert _expect(r, 64 << 10, 1)
    del blocker


def test_shrink_large_in_place_and_small_class_in_place():
    r = pa.allocate_buffer(1 << 20, memory_pool=POOL, resizable=True)
    _fill(r, 2)
    addr = r.address
    ip0, cp0 = _realloc_counts()
    r.resize(256 << 10, shrink_to_fit=True)
    assert r.address == addr
    assert _realloc_counts() == (ip0 + 1, cp0)
    assert _expect(r, 256 << 10, 2)

    s = pa.allocate_buffer(1100, memory_pool=POOL, resizable=True)  # class 1280
    _fill(s, 4)
    addr = s.address
    ip0, cp0 = _realloc_counts()
    s.resize(1200)  # PoolBuffer capacity 1216, same class
    assert s.address == addr
    assert _realloc_counts() == (ip0 + 1, cp0)
    s.resize(2000)  # different class: copied
    assert _realloc_counts() == (ip0 + 1, cp0 + 1)
    assert _expect(s, 1100, 4)


def test_bytes_allocated_follows_resizes():
    b0 = POOL.bytes_allocated()
    r = pa.allocate_buffer(1000, memory_pool=POOL, resizable=True)
    for n in (5000, 70_000, 3 << 20, 10, 0, 100):
        r.resize(n, shrink_to_fit=True)
        assert POOL.bytes_allocated() - b0 == -(-n // 64) * 64
    del r
    assert POOL.bytes_allocated() == b0


def test_builders_that_reallocate(zerrow_default):
    # Arrow's builders grow by reallocation: concat of many pieces, string building.
    pieces = [pa.array([f"s{i}-{j}" for j in range(50)]) for i in range(200)]
    joined = pa.concat_arrays(pieces)
    assert zerrow_pool.owns(joined)
    assert joined.to_pylist() == [f"s{i}-{j}" for i in range(200) for j in range(50)]
    built = pa.array(range(300_000))  # builder growth by reallocation (numpy input would be zero-copy)
    assert zerrow_pool.owns(built) and built[299_999].as_py() == 299_999


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=300_000), min_size=1, max_size=12), st.integers(0, 255))
def test_resize_sequences_keep_contents(sizes, seed):
    r = pa.allocate_buffer(sizes[0], memory_pool=POOL, resizable=True)
    _fill(r, seed)
    expected = np.frombuffer(r, dtype=np.uint8).copy()
    for n in sizes[1:]:
        r.resize(n, shrink_to_fit=bool(n % 2))
        keep = min(len(expected), n)
        assert (np.frombuffer(r, dtype=np.uint8)[:keep] == expected[:keep]).all()
        a = np.frombuffer(r, dtype=np.uint8)
        a[keep:] = seed
        expected = a.copy()
    assert r.address % 64 == 0
