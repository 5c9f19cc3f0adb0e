"""Concurrent allocation, reallocation and freeing from several threads."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import zerrow_pool

POOL = zerrow_pool.pool()
THREADS = 6
ROUNDS = 40


def _worker(seed, errors):
    rng = np.random.default_rng(seed)
    live = []
    try:
        for r in range(ROUNDS):
            n = int(rng.integers(1, 50_000))
            base = pa.array(np.arange(n, dtype=np.int64) + seed, memory_pool=POOL)
            # compute kernels release the GIL and allocate their outputs from the pool
            doubled = pc.multiply(base, 2, memory_pool=POOL)
            strs = pc.cast(doubled, pa.string(), memory_pool=POOL)
            back = pc.cast(strs, pa.int64(), memory_pool=POOL)
            assert back.equals(doubled)
            joined = pa.concat_arrays([base, doubled, base.slice(n // 2)], memory_pool=POOL)
            assert len(joined) == 2 * n + (n - n // 2)
            assert joined[n].as_py() == 2 * seed
            sorted_idx = pc.sort_indices(pc.negate(base, memory_pool=POOL), memory_pool=POOL)
            assert sorted_idx[0].as_py() == n - 1

            # a resizable buffer grown and shrunk with a per-thread byte pattern
            buf = pa.allocate_buffer(int(rng.integers(1, 40_000)), memory_pool=POOL, resizable=True)
            np.frombuffer(buf, dtype=np.uint8)[:] = seed
            for m in rng.integers(1, 400_000, size=4):
                keep = min(buf.size, int(m))
                buf.resize(int(m), shrink_to_fit=bool(m % 2))
                a = np.frombuffer(buf, dtype=np.uint8)
                assert (a[:keep] == seed).all()
                a[keep:] = seed
            live.append((joined, strs, buf))
            # free a random earlier survivor, so frees interleave with other threads' allocations
            if len(live) > 4:
                live.pop(int(rng.integers(0, len(live))))
        for joined, strs, buf in live:
            assert joined[0].as_py() == seed
            assert (np.frombuffer(buf, dtype=np.uint8) == seed).all()
            assert zerrow_pool.owns(joined) and zerrow_pool.owns(strs) and zerrow_pool.owns(buf)
    except BaseException as e:  # noqa: BLE001 - reported to the main thread
        errors.append((seed, repr(e)))


def test_concurrent_alloc_realloc_free():
    errors = []
    b0 = POOL.bytes_allocated()
    threads = [threading.Thread(target=_worker, args=(s, errors)) for s in range(1, THREADS + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert POOL.bytes_allocated() == b0


def test_many_small_buffers_from_threads_do_not_overlap():
    def make(seed):
        bufs = []
        for i in range(2000):
            b = pa.allocate_buffer(64 + (i * 37) % 4000, memory_pool=POOL)
            np.frombuffer(b, dtype=np.uint8)[:] = seed
            bufs.append(b)
        return bufs

    with ThreadPoolExecutor(4) as ex:
        per_thread = list(ex.map(make, range(1, 5)))
    spans = sorted((b.address, b.address + b.size) for bufs in per_thread for b in bufs)
    assert all(e <= s for (_, e), (s, _) in zip(spans, spans[1:]))
    for seed, bufs in enumerate(per_thread, start=1):
        assert all((np.frombuffer(b, dtype=np.uint8) == seed).all() for b in bufs)


def test_cross_thread_free():
    # Buffers made on one thread and dropped on another (shards must route frees back).
    made = []
    with ThreadPoolExecutor(3) as ex:
        made = list(ex.map(lambda i: [pa.allocate_buffer(100 + i, memory_pool=POOL) for _ in range(3000)], range(3)))
    b0 = POOL.bytes_allocated()
    freed = sum(b.size and -(-b.size // 64) * 64 for bufs in made for b in bufs)

    def drop(i):
        made[i].clear()

    with ThreadPoolExecutor(3) as ex:
        list(ex.map(drop, [2, 0, 1]))
    assert POOL.bytes_allocated() == b0 - freed
    # and the freed slots are reusable
    again = [pa.allocate_buffer(100, memory_pool=POOL) for _ in range(3000)]
    assert len({b.address for b in again}) == 3000


def test_scope_entered_while_other_threads_allocate():
    stop = threading.Event()
    errors = []

    def churn():
        try:
            while not stop.is_set():
                a = pc.add(pa.array(np.arange(10_000), memory_pool=POOL), 1, memory_pool=POOL)
                assert a[9_999].as_py() == 10_000 and zerrow_pool.owns(a)
        except BaseException as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        kept = []
        for _ in range(30):
            with zerrow_pool.scope():
                kept.append(pa.array(range(2000)))
        assert all(zerrow_pool.owns(k) and k[1999].as_py() == 1999 for k in kept)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert zerrow_pool.stats()["scopes_open"] == 0
