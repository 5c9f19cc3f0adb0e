"""The scope() context manager: confine what user code allocates to segments of its own."""

import contextlib

import pyarrow as pa

from ._pyarrow_check import load_core

_core = load_core()


@contextlib.contextmanager
def scope(expected_bytes: int = 0):
    """Run a block with the zerrow pool as pyarrow's default, in segments of its own.

    Inside the block, ``pa.default_memory_pool()`` is the zerrow pool and every
    allocation the pool serves, from any thread (Arrow's worker threads
    included), lands in memfd segments that belong to this scope alone. What the
    block produces can then be shared without exposing anything allocated
    outside it. On exit, also by exception, the previous default pool is
    restored; buffers made inside stay valid, and the scope's segments are
    unmapped as their last buffer is freed.

    Scopes nest: the innermost open scope receives allocations. Scopes are
    process-wide, not per thread: if two threads open scopes at the same time,
    every thread's allocations go to whichever scope was entered last and is
    still open, so concurrent scopes do not isolate threads from each other.
    Use one process per tenant (as the pipeline runtime does) for isolation.

    Allocations that bypass pyarrow's default pool (Acero, Parquet/dataset IO)
    land in zerrow memory only when the process runs with the preload library
    (see :func:`zerrow_pool.preload_path`).

    Parameters
    ----------
    expected_bytes : int, default 0
        How much the block is expected to allocate at most (0: unknown), for
        instance what the same code took the last time it ran. The scope then
        reuses warm memory left by finished scopes from one spare segment that
        fits it, rather than from the smallest fit for each allocation: its
        buffers stay together, and the other spares stay whole for the code
        that runs next (once a segment is shared, its free memory is not
        reused until every reader has let go). A hint only: allocating more
        or less is fine.

    Yields
    ------
    pyarrow.MemoryPool
        The zerrow pool (also ``pa.default_memory_pool()`` inside the block).

    Examples
    --------
    >>> import pyarrow as pa, zerrow_pool as zp
    >>> with zp.scope():
    ...     t = pa.table({"x": list(range(1000))})
    >>> zp.owns(t)
    True
    """
    previous = pa.default_memory_pool()
    if expected_bytes < 0:
        raise ValueError(f"expected_bytes must be >= 0, got {expected_bytes}")
    token = _core.push_scope(int(expected_bytes))
    pa.set_memory_pool(_core.pool())
    try:
        yield _core.pool()
    finally:
        _core.pop_scope(token)
        pa.set_memory_pool(previous)
