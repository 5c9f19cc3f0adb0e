"""The zerrow pool as a plain Arrow MemoryPool: alignment, zero-size buffers, owns(), stats."""

import gc

import numpy as np
import pyarrow as pa
import pytest

import zerrow_pool
from conftest import memfd_mapping_of

POOL = zerrow_pool.pool()

# Spans every small size class boundary region, the small/large cut-over (32 KiB)
# and multi-page extents.
SIZES = [1, 7, 63, 64, 65, 127, 500, 1023, 1024, 1025, 2048, 4095, 4096, 4097,
         16384, 32767, 32768, 32769, 65536, 100_000, 1 << 20, (3 << 20) + 5]


def test_backend_name_and_identity():
    assert POOL.backend_name == "zerrow"
    assert zerrow_pool.pool() is POOL


@pytest.mark.parametrize("size", SIZES)
def test_default_alignment_is_64(size):
    bufs = [pa.allocate_buffer(size, memory_pool=POOL) for _ in range(8)]
    for b in bufs:
        assert b.size == size
        assert b.address % 64 == 0
        assert zerrow_pool.owns(b)
        assert memfd_mapping_of(b.address) is not None


def test_buffers_do_not_overlap_and_keep_contents():
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 70_000, size=300)
    bufs = []
    for i, n in enumerate(sizes):
        b = pa.allocate_buffer(int(n), memory_pool=POOL)
        np.frombuffer(b, dtype=np.uint8)[:] = i % 251
        bufs.append(b)
    spans = sorted((b.address, b.address + b.size) for b in bufs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start
    for i, b in enumerate(bufs):
        assert (np.frombuffer(b, dtype=np.uint8) == i % 251).all()


@pytest.mark.parametrize("first,second,slot", [(5000, 4200, 5120), (40_000, 36_000, 36_864)])
def test_reused_memory_is_zeroed_past_the_request(first, second, slot):
    # Memory handed out again must not leak an earlier owner's bytes past the
    # requested size (a consumer of a shared buffer may see the whole slot/page).
    b = pa.allocate_buffer(first, memory_pool=POOL)
    np.frombuffer(b, dtype=np.uint8)[:] = 0xAB
    del b
    c = pa.allocate_buffer(second, memory_pool=POOL)
    requested = -(-second // 64) * 64  # PoolBuffer's capacity
    whole = np.frombuffer(pa.foreign_buffer(c.address, slot, base=c), dtype=np.uint8)
    assert not whole[requested:].any()


def test_zero_size_buffers():
    before = POOL.bytes_allocated()
    bufs = [pa.allocate_buffer(0, memory_pool=POOL) for _ in range(3)]
    for b in bufs:
        assert b.size == 0
        assert b.address % 64 == 0
        assert b.to_pybytes() == b""
        assert zerrow_pool.owns(b)
    assert POOL.bytes_allocated() == before
    r = pa.allocate_buffer(0, memory_pool=POOL, resizable=True)
    r.resize(1000)
    np.frombuffer(r, dtype=np.uint8)[:] = 5
    assert zerrow_pool.owns(r) and r.address % 64 == 0
    r.resize(0, shrink_to_fit=True)
    assert r.size == 0
    del bufs, r
    assert POOL.bytes_allocated() == before


def test_empty_arrays_and_tables(zerrow_default):
    t = pa.table({"a": pa.array([], pa.int64()), "s": pa.array([], pa.string())})
    assert zerrow_pool.owns(t)
    assert zerrow_pool.owns(pa.chunked_array([], pa.int32()))


def test_owns_rejects_foreign_memory_and_types():
    assert not zerrow_pool.owns(pa.py_buffer(b"x" * 1000))
    assert not zerrow_pool.owns(pa.array(range(1000), memory_pool=pa.system_memory_pool()))
    mixed = pa.table({
        "z": pa.array(range(100), memory_pool=POOL),
        "s": pa.array(range(100), memory_pool=pa.system_memory_pool()),
    })
    assert not zerrow_pool.owns(mixed)
    assert zerrow_pool.owns(mixed.select(["z"]))
    assert zerrow_pool.owns(mixed.to_batches()[0].select(["z"]))
    with pytest.raises(TypeError):
        zerrow_pool.owns([1, 2, 3])


def test_owns_walks_children_and_dictionaries():
    values = pa.array(["a", "bb", None, "ccc"] * 50, memory_pool=POOL)
    nested = pa.array([[{"x": 1, "y": "s"}], [], None] * 40, memory_pool=POOL)
    assert zerrow_pool.owns(values) and zerrow_pool.owns(nested)
    # A dictionary array whose dictionary lies outside the pool is not owned.
    indices = pa.array([0, 1, 0], pa.int32(), memory_pool=POOL)
    foreign_dict = pa.DictionaryArray.from_arrays(indices, pa.array(["p", "q"], memory_pool=pa.system_memory_pool()))
    own_dict = pa.DictionaryArray.from_arrays(indices, pa.array(["p", "q"], memory_pool=POOL))
    assert not zerrow_pool.owns(foreign_dict)
    assert zerrow_pool.owns(own_dict)
    # A list whose child values lie outside the pool is not owned.
    child = pa.array(range(10), memory_pool=pa.system_memory_pool())
    offsets = pa.array([0, 5, 10], pa.int32(), memory_pool=POOL)
    assert not zerrow_pool.owns(pa.ListArray.from_arrays(offsets, child))


def _counters(pool):
    return pool.bytes_allocated(), pool.total_bytes_allocated(), pool.num_allocations()


def _scripted_sequence(pool):
    """A fixed allocate/grow/shrink/free script; the counters after each step."""
    steps = [_counters(pool)]
    keep = [pa.allocate_buffer(n, memory_pool=pool) for n in (64, 1000, 5000, 70_000, 2 << 20)]
    steps.append(_counters(pool))
    r = pa.allocate_buffer(40_000, memory_pool=pool, resizable=True)
    steps.append(_counters(pool))
    r.resize(100_000)
    steps.append(_counters(pool))
    r.resize(300, shrink_to_fit=True)
    steps.append(_counters(pool))
    r.resize(0, shrink_to_fit=True)
    steps.append(_counters(pool))
    del keep[1:3]
    steps.append(_counters(pool))
    del keep, r
    steps.append(_counters(pool))
    base = steps[0]
    return [tuple(x - y for x, y in zip(s, base)) for s in steps[1:]]


def test_stats_bytes_match_arrow_accounting():
    """bytes_allocated and total_bytes_allocated move exactly as in Arrow's own pools."""
    ref = _scripted_sequence(pa.system_memory_pool())
    got = _scripted_sequence(POOL)
    assert [s[:2] for s in got] == [s[:2] for s in ref]
    assert got[-1][0] == 0


def test_stats_num_allocations_match_arrow_accounting():
    ref = _scripted_sequence(pa.system_memory_pool())
    got = _scripted_sequence(POOL)
    assert [s[2] for s in got] == [s[2] for s in ref]


def test_stats_zero_size_allocation_counted():
    n = POOL.num_allocations()
    b = pa.allocate_buffer(0, memory_pool=POOL)
    assert POOL.num_allocations() == n + 1
    del b


def test_stats_max_memory_of_copying_realloc():
    with zerrow_pool.scope():
        # a fresh scope so that the peak is set by this test alone... but max_memory is
        # process-wide: measure it relative to the current level instead.
        base = POOL.bytes_allocated()
        r = pa.allocate_buffer(POOL.max_memory() - base + (1 << 20), resizable=True)
        peak = POOL.max_memory()
        r.resize(1000, shrink_to_fit=True)  # large -> small: copied
        assert POOL.max_memory() == peak
        del r


def test_stats_dict_agrees_with_pool_methods():
    keep = pa.allocate_buffer(123_456, memory_pool=POOL)
    # Pages exist once written (sparse memfd): run alone, an untouched buffer is not resident.
    np.frombuffer(keep, dtype=np.uint8)[:] = 1
    s = zerrow_pool.stats()
    assert s["bytes_allocated"] == POOL.bytes_allocated()
    assert s["max_memory"] == POOL.max_memory()
    assert s["total_bytes_allocated"] == POOL.total_bytes_allocated()
    assert s["num_allocations"] == POOL.num_allocations()
    assert s["max_memory"] >= s["bytes_allocated"] >= keep.size
    assert s["segments"] >= 1 and s["frozen_segments"] >= 0
    assert s["bytes_resident"] >= keep.size
    assert s["bytes_retained"] >= 0  # <= bytes_resident: see test_pool_release.py
    assert s["scopes_open"] == 0
    with zerrow_pool.scope():
        assert zerrow_pool.stats()["scopes_open"] == 1
        with zerrow_pool.scope():
            assert zerrow_pool.stats()["scopes_open"] == 2
    assert zerrow_pool.stats()["scopes_open"] == 0


def test_stats_simple_arithmetic():
    gc.collect()
    b0, t0, n0 = _counters(POOL)
    bufs = [pa.allocate_buffer(1000 * (i + 1), memory_pool=POOL) for i in range(10)]
    # PoolBuffer rounds capacities up to 64 bytes.
    padded = sum(-(-1000 * (i + 1) // 64) * 64 for i in range(10))
    assert _counters(POOL) == (b0 + padded, t0 + padded, n0 + 10)
    assert POOL.max_memory() >= b0 + padded
    peak = POOL.max_memory()
    del bufs
    assert _counters(POOL) == (b0, t0 + padded, n0 + 10)
    assert POOL.max_memory() == peak


def test_max_memory_tracks_peak():
    base = POOL.bytes_allocated()
    big = pa.allocate_buffer(POOL.max_memory() - base + (8 << 20), memory_pool=POOL)
    peak = POOL.max_memory()
    assert peak == base + big.size
    del big
    small = pa.allocate_buffer(1 << 20, memory_pool=POOL)
    assert POOL.max_memory() == peak
    del small


def test_huge_allocation_beyond_segment_capacity():
    # Larger than a quarter of the 1 GiB default segment: a dedicated, sparse segment.
    n = (300 << 20) + 3
    b = pa.allocate_buffer(n, memory_pool=POOL)
    assert b.address % 64 == 0 and zerrow_pool.owns(b)
    a = np.frombuffer(b, dtype=np.uint8)
    a[:4096] = 1
    a[-4096:] = 2
    assert a[0] == 1 and a[-1] == 2 and a[n // 2] == 0
    del a, b


def test_out_of_memory_is_an_error_not_a_crash():
    with pytest.raises(MemoryError):
        pa.allocate_buffer(1 << 62, memory_pool=POOL)


def test_stats_is_typed_and_a_mapping(capfd):
    """stats() has attributes, is still the dict it used to be, and print_stats() prints it."""
    import zerrow_pool

    buf = pa.allocate_buffer(1 << 20, memory_pool=zerrow_pool.pool())
    s = zerrow_pool.stats()
    assert isinstance(s, zerrow_pool.PoolStats)
    assert s.bytes_allocated == s["bytes_allocated"] >= 1 << 20
    assert dict(s)["segments"] == s.segments and "cow_bytes_copied" in s
    import json
    assert json.loads(json.dumps(s)) == dict(s)
    with pytest.raises(KeyError):
        s["no_such_counter"]
    zerrow_pool.print_stats()
    zerrow_pool.pool().print_stats()
    err = capfd.readouterr().err
    assert err.count("zerrow pool:") == 2 and "bytes_allocated" in err and "segments_reclaimed" in err
    del buf
