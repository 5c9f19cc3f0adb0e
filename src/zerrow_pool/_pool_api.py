"""The pool's functions of the public API (``zerrow_pool.owns``, ``stats``...), over the core."""

from ._pool_stats import PoolStats
from ._pyarrow_check import load_core

_core = load_core()


def kernel_module_available() -> bool:
    """Whether the zerrow kernel module is loaded (``/dev/zerrow`` answers).

    Then :func:`share` pins buffers that zerrow did not allocate (numpy, Polars,
    DuckDB...) into a de-anonymized file instead of copying them, and remaps
    this process's view of them read-only; a later write here gets a private
    copy of the touched 2 MiB chunk (``stats().cow_bytes_copied``). Set
    ``ZERROW_KMOD=0`` to copy instead.

    Returns
    -------
    bool
        True when shares place foreign memory through the module.
    """
    return _core.kernel_module_available()


def owns(obj) -> bool:
    """Whether every buffer of ``obj`` lies in zerrow memory (so sharing it copies nothing).

    Zerrow memory is this process's pool and segments attached from other
    processes. Children and dictionaries are included; empty buffers hold no
    bytes and count as owned.

    Parameters
    ----------
    obj : pyarrow.Buffer, Array, ChunkedArray, RecordBatch or Table
        What to look at.

    Returns
    -------
    bool
        True when every non-empty buffer lies in zerrow memory.

    Raises
    ------
    TypeError
        ``obj`` is none of the types above.
    """
    return _core.owns(obj)


def stats() -> PoolStats:
    """The pool's counters, a snapshot.

    bytes_allocated, max_memory, total_bytes_allocated and num_allocations as
    in any Arrow pool; realloc_in_place / realloc_copied count reallocations
    that kept / moved their buffer; segments and frozen_segments count this
    process's memfd segments in use; spare_segments, the empty segments of
    finished scopes kept (resident, their old bytes zeroed as they are reused)
    for the next scope, up to ZERROW_SPARE_BYTES of resident memory (default:
    twice max_memory, at least 1 GiB; K/M/G suffixes accepted); lent_segments,
    shared segments with nothing live here that readers elsewhere may still map
    (they become spares once the kernel reports no other holder of the file,
    counted by segments_reclaimed); bytes_resident is the memory backing all of
    them now and bytes_retained the part of it that is free and kept for reuse;
    cow_bytes_copied counts bytes this process copied because it wrote to
    memory it had de-anonymized with the kernel module.

    Returns
    -------
    PoolStats
        The counters as attributes; also the dict of the same names it always was.
    """
    return PoolStats(**_core.stats(), cow_bytes_copied=_core.cow_bytes_copied())


def print_stats() -> None:
    """Write the pool's counters to stderr, one a line.

    What ``pool().print_stats()`` does too (Arrow's ``MemoryPool::PrintStats``).

    See Also
    --------
    stats : the same counters as an object.
    """
    _core.pool().print_stats()


def release_unused() -> None:
    """Return free memory kept for reuse to the kernel and unmap empty segments.

    Punches the resident free extents of every arena, returns empty slabs, and
    unmaps spare and lent segments (lent ones stay readable by the processes
    that map them). Buffers in use are not touched.

    See Also
    --------
    pyarrow.MemoryPool.release_unused : the same, called on ``pool()``.
    """
    _core.release_unused()
