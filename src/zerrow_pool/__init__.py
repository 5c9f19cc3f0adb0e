"""zerrow: true zero-copy Apache Arrow between processes.

``pool()`` is a pyarrow MemoryPool whose every buffer lives in memfd shared
memory; ``scope()`` makes it the default around a block of code, in segments
of its own; ``owns()`` tells whether an object lies entirely in zerrow memory.
"""

from ._pyarrow_check import check_pyarrow as _check_pyarrow, mismatch_message as _mismatch_message

_check_pyarrow()
try:
    from . import _core
except ImportError as e:  # a libarrow the check could not foresee (a pyarrow moved or half-installed)
    if "libarrow" not in str(e):
        raise
    import pyarrow
    raise ImportError(f"{_mismatch_message(pyarrow.__version__)}\n({e})") from e

from ._core import owns as _owns, pool, preload_active, release_unused as _release_unused, stats as _stats
from ._preload import preload_env, preload_path
from ._scope import scope
from ._pool_stats import PoolStats
from ._sharing import Channel, Share, ShareCounters, ShareError, attach, recv, recv_share, send, share
from ._core import kernel_module_available as _kernel_module_available, cow_bytes_copied as _cow_bytes_copied

__all__ = [
    "pool", "scope", "owns", "stats", "print_stats", "PoolStats", "release_unused", "preload_path", "preload_env", "preload_active",
    "share", "attach", "send", "recv", "recv_share", "Share", "ShareCounters", "ShareError", "Channel",
    "kernel_module_available",
]


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
    return _kernel_module_available()


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
    return _owns(obj)


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
    return PoolStats(**_stats(), cow_bytes_copied=_cow_bytes_copied())


def print_stats() -> None:
    """Write the pool's counters to stderr, one a line.

    What ``pool().print_stats()`` does too (Arrow's ``MemoryPool::PrintStats``).

    See Also
    --------
    stats : the same counters as an object.
    """
    pool().print_stats()


def release_unused() -> None:
    """Return free memory kept for reuse to the kernel and unmap empty segments.

    Punches the resident free extents of every arena, returns empty slabs, and
    unmaps spare and lent segments (lent ones stay readable by the processes
    that map them). Buffers in use are not touched.

    See Also
    --------
    pyarrow.MemoryPool.release_unused : the same, called on ``pool()``.
    """
    _release_unused()
