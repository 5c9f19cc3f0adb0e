# cython: language_level=3
# distutils: language = c++
"""Thin bindings over the C++ pool (csrc/). Python-facing API lives in __init__.py."""

from cython.operator cimport dereference as deref
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libcpp cimport bool as cbool
from libcpp.memory cimport shared_ptr
from libcpp.vector cimport vector

from pyarrow.includes.common cimport CStatus
from pyarrow.includes.libarrow cimport (
    CArray, CBuffer, CChunkedArray, CMemoryPool, CRecordBatch, CTable,
)
from pyarrow.lib cimport (
    MemoryPool, check_status, pyarrow_unwrap_array, pyarrow_unwrap_batch,
    pyarrow_unwrap_buffer, pyarrow_unwrap_chunked_array, pyarrow_unwrap_table,
)

import pyarrow as pa


cdef extern from "zerrow_pool.h" namespace "zerrow" nogil:
    cdef cppclass PoolStats:
        int64_t bytes_allocated, max_memory, total_bytes_allocated, num_allocations
        int64_t realloc_in_place, realloc_copied, segments, frozen_segments, spare_segments
        int64_t lent_segments, segments_reclaimed
        int64_t bytes_resident, bytes_retained, scopes_open

    cdef cppclass SegmentRegistry:
        pass

    cdef cppclass ZerrowPool(CMemoryPool):
        @staticmethod
        ZerrowPool* Instance()
        SegmentRegistry& registry()
        uint64_t PushScope(size_t expected_bytes)
        CStatus PopScope(uint64_t token)
        PoolStats Stats()
        void ReleaseUnused()


cdef extern from * nogil:
    """
    #include <dlfcn.h>
    // Hands the pool to the LD_PRELOAD library when the process was started with it.
    static int zerrow_register_with_preload(void* pool) {
      auto set = reinterpret_cast<void (*)(void*)>(dlsym(RTLD_DEFAULT, "zerrow_preload_set_pool"));
      if (set == nullptr) return 0;
      set(pool);
      return 1;
    }
    """
    int zerrow_register_with_preload(void* pool)


cdef MemoryPool _pool = MemoryPool.__new__(MemoryPool)
_pool.init(<CMemoryPool*> ZerrowPool.Instance())

#: True when libzerrow_preload.so was preloaded and now routes
#: arrow::default_memory_pool() to the zerrow pool.
preload_active = bool(zerrow_register_with_preload(<void*> ZerrowPool.Instance()))


def pool():
    """The zerrow memory pool, as a ``pyarrow.MemoryPool``.

    Every buffer it allocates lies in a memfd segment, so it can be handed to
    another process without copying (:func:`zerrow_pool.share`). There is one
    pool per process; this returns it, it does not make a new one.

    Returns
    -------
    pyarrow.MemoryPool
        Pass it as ``memory_pool=`` to pyarrow calls, or make it the default
        with ``pa.set_memory_pool(zerrow_pool.pool())``. Prefer
        :func:`zerrow_pool.scope`, which does that for a block and keeps what
        the block allocates in segments of its own.
    """
    return _pool


def push_scope(size_t expected_bytes=0):
    return ZerrowPool.Instance().PushScope(expected_bytes)


def pop_scope(uint64_t token):
    check_status(ZerrowPool.Instance().PopScope(token))


def stats():
    cdef PoolStats s = ZerrowPool.Instance().Stats()
    return {
        "bytes_allocated": s.bytes_allocated,
        "max_memory": s.max_memory,
        "total_bytes_allocated": s.total_bytes_allocated,
        "num_allocations": s.num_allocations,
        "realloc_in_place": s.realloc_in_place,
        "realloc_copied": s.realloc_copied,
        "segments": s.segments,
        "frozen_segments": s.frozen_segments,
        "spare_segments": s.spare_segments,
        "lent_segments": s.lent_segments,
        "segments_reclaimed": s.segments_reclaimed,
        "bytes_resident": s.bytes_resident,
        "bytes_retained": s.bytes_retained,
        "scopes_open": s.scopes_open,
    }


def release_unused():
    with nogil:
        ZerrowPool.Instance().ReleaseUnused()


include "_share.pxi"
