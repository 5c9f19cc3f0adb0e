# Included by _core.pyx: bindings of the sharing layer (csrc/share_*.h).
# C++ calls return arrow::Result<T> / Status; a failed one becomes a Python
# exception in one place, share_exception(), by its code and detail (errno,
# connection closed), never by its message text.

from libc.errno cimport ETIMEDOUT
from libcpp.string cimport string as cstring
from libcpp.utility cimport move

from pyarrow.includes.common cimport CResult, GetResultValue
from pyarrow.includes.libarrow cimport ErrnoFromStatus
from pyarrow.lib cimport (
    pyarrow_wrap_array, pyarrow_wrap_batch, pyarrow_wrap_chunked_array, pyarrow_wrap_table,
)


cdef extern from "sipc_format.h" namespace "zerrow::sipc" nogil:
    cdef enum class ObjectKind:
        kTable
        kRecordBatch
        kArray
        kChunkedArray

    cdef cppclass ReferenceTotals:
        int64_t nbytes, nbuffers
    CResult[ReferenceTotals] Totals(const cstring& descriptor)
    CResult[cstring] MarkSpilled(const cstring& descriptor)
    CResult[vector[uint8_t]] SegmentKinds(const cstring& descriptor)


cdef extern from "shared_object.h" namespace "zerrow" nogil:
    cdef cppclass SharedObject:
        ObjectKind kind
    SharedObject FromTable(const shared_ptr[CTable]& table)
    SharedObject FromRecordBatch(const shared_ptr[CRecordBatch]& batch)
    SharedObject FromArray(const shared_ptr[CArray]& array)
    SharedObject FromChunkedArray(const shared_ptr[CChunkedArray]& chunked)
    CResult[shared_ptr[CTable]] ToTable(const SharedObject& object)
    CResult[shared_ptr[CRecordBatch]] ToRecordBatch(const SharedObject& object)
    CResult[shared_ptr[CArray]] ToArray(const SharedObject& object)
    CResult[shared_ptr[CChunkedArray]] ToChunkedArray(const SharedObject& object)


cdef extern from "buffer_walk.h" namespace "zerrow" nogil:
    cbool AllInZerrowMemory(const SegmentRegistry& registry, const SharedObject& object)
    cbool InZerrowMemory(const SegmentRegistry& registry, const CBuffer& buffer)


cdef extern from "share_export.h" namespace "zerrow" nogil:
    cdef cppclass ShareOptions:
        cbool seal, strict_exposure, keep_free
    cdef cppclass ShareResult:
        cstring descriptor
        vector[int] fds
        int64_t nbytes, nbuffers, bytes_zero_copy, bytes_copied, bytes_exposed
    CResult[ShareResult] Share(ZerrowPool& pool, const SharedObject& object, const ShareOptions& options)


cdef extern from "share_import.h" namespace "zerrow" nogil:
    cdef cppclass AttachOptions:
        cbool validate_full, spill_files
    CResult[SharedObject] Attach(ZerrowPool& pool, const cstring& descriptor, const vector[int]& fds,
                                 const AttachOptions& options)


cdef extern from "fd_transport.h" namespace "zerrow" nogil:
    size_t kMaxFdsPerMessage
    cdef cppclass Received:
        cstring descriptor
        vector[int] fds
    CStatus SendDescriptor(int sock, cstring descriptor, const vector[int]& fds, int timeout_ms)
    CResult[Received] RecvDescriptor(int sock, int timeout_ms)
    cbool IsConnectionClosed(const CStatus& status)


cdef extern from "share_export.h" namespace "zerrow" nogil:
    cdef cppclass ForeignMemoryHook:
        pass
    void SetForeignMemoryHook(shared_ptr[ForeignMemoryHook] hook)


cdef extern from "kmod_foreign_hook.h" namespace "zerrow" nogil:
    cbool KernelModuleAvailable()
    shared_ptr[ForeignMemoryHook] MakeKernelModuleHook()


cdef extern from "cow_guard.h" namespace "zerrow" nogil:
    int64_t CowBytesCopied()
    void EnsureCowHandler()
    cbool CowRangesGuarded()


SetForeignMemoryHook(MakeKernelModuleHook())

#: Fds per socket message in a transport frame (the kernel's SCM_MAX_FD is 253); more ride on
#: continuation messages (csrc/fd_transport.h, docs/SHARED_IPC.md).
MAX_FDS_PER_MESSAGE = kMaxFdsPerMessage


def kernel_module_available():
    return KernelModuleAvailable()


def cow_bytes_copied():
    return CowBytesCopied()


def ensure_cow_handler():
    EnsureCowHandler()


# Something may replace the copy-on-write SIGSEGV handler during the run
# (pytest's faulthandler plugin restores its predecessor when it ends), and
# frees during shutdown (other libraries' atexit hooks included) may still
# write to de-anonymized ranges: put the handler back first thing at exit.
# Re-registered after each share that guarded memory, so it runs before the
# exit hooks of libraries imported since (atexit runs the newest first).
import atexit as _atexit


def keep_cow_handler_at_exit():
    if CowRangesGuarded():
        _atexit.unregister(ensure_cow_handler)
        _atexit.register(ensure_cow_handler)


class ShareError(pa.ArrowInvalid):
    """A share could not be made, sent, received or attached; the message names the problem.

    A ``pyarrow.ArrowInvalid`` (so a ``ValueError`` and ``pyarrow.ArrowException``), as
    pyarrow raises for invalid data.

    Attributes
    ----------
    errno : int or None
        The system error behind it (``errno.EBADF``...), when a system call failed.
    """

    errno = None


cdef object share_exception(const CStatus& st):
    """The exception for a failed status of the sharing layer (the one place they are mapped).

    The peer closing the connection is an ``EOFError``; a timeout a ``TimeoutError`` (with its
    errno); anything else a :class:`ShareError`, carrying the errno if a system call failed.
    """
    message = st.message().decode("utf-8", "replace")
    if IsConnectionClosed(st):
        return EOFError(message)
    err = ErrnoFromStatus(st)
    if err == ETIMEDOUT:
        return TimeoutError(err, message)
    exc = ShareError(message)
    if err != 0:
        exc.errno = err
    return exc


cdef int check_share(const CStatus& st) except -1 nogil:
    if st.ok():
        return 0
    with gil:
        raise share_exception(st)


cdef SharedObject shared_object_of(obj, str accepted) except *:
    """The one dispatch from pyarrow types to the C++ object the sharing layer walks.

    ``accepted`` starts the TypeError's message: "<caller> takes <types>".
    """
    if isinstance(obj, pa.Table):
        return FromTable(pyarrow_unwrap_table(obj))
    if isinstance(obj, pa.RecordBatch):
        return FromRecordBatch(pyarrow_unwrap_batch(obj))
    if isinstance(obj, pa.ChunkedArray):
        return FromChunkedArray(pyarrow_unwrap_chunked_array(obj))
    if isinstance(obj, pa.Array):
        return FromArray(pyarrow_unwrap_array(obj))
    raise TypeError(f"{accepted}, not {type(obj).__name__}")


cdef object wrap_shared_object(const SharedObject& so):
    """And back: the pyarrow object of the kind the descriptor named."""
    cdef CResult[shared_ptr[CTable]] table
    cdef CResult[shared_ptr[CRecordBatch]] batch
    cdef CResult[shared_ptr[CArray]] array
    cdef CResult[shared_ptr[CChunkedArray]] chunked
    if so.kind == ObjectKind.kTable:
        table = ToTable(so)
        check_share(table.status())
        check_share(deref(table).get().Validate())
        return pyarrow_wrap_table(GetResultValue(move(table)))
    if so.kind == ObjectKind.kRecordBatch:
        batch = ToRecordBatch(so)
        check_share(batch.status())
        check_share(deref(batch).get().Validate())
        return pyarrow_wrap_batch(GetResultValue(move(batch)))
    if so.kind == ObjectKind.kArray:
        array = ToArray(so)
        check_share(array.status())
        return pyarrow_wrap_array(GetResultValue(move(array)))
    chunked = ToChunkedArray(so)
    check_share(chunked.status())
    return pyarrow_wrap_chunked_array(GetResultValue(move(chunked)))


def owns(obj):
    cdef shared_ptr[CBuffer] buf
    if isinstance(obj, pa.Buffer):
        buf = pyarrow_unwrap_buffer(obj)
        return InZerrowMemory(ZerrowPool.Instance().registry(), deref(buf))
    return AllInZerrowMemory(ZerrowPool.Instance().registry(), shared_object_of(
        obj, "owns() takes a pyarrow Buffer, Table, RecordBatch, Array or ChunkedArray"))


cdef vector[int] fd_vector(fds) except *:
    cdef vector[int] out
    for fd in fds:
        out.push_back(<int> fd)
    return out


def share_raw(obj, cbool seal, cbool strict_exposure=False, cbool keep_free=False):
    """Returns (descriptor, fds, counters dict); the caller owns the fds."""
    cdef SharedObject so = shared_object_of(obj, "share() takes a pyarrow Table, RecordBatch, Array or ChunkedArray")
    cdef ShareOptions options
    options.seal = seal
    options.strict_exposure = strict_exposure
    options.keep_free = keep_free
    cdef CResult[ShareResult] result
    with nogil:
        result = Share(deref(ZerrowPool.Instance()), so, options)
    check_share(result.status())
    cdef ShareResult r = GetResultValue(move(result))
    counters = {
        "nbytes": r.nbytes, "nbuffers": r.nbuffers, "bytes_zero_copy": r.bytes_zero_copy,
        "bytes_copied": r.bytes_copied, "bytes_exposed": r.bytes_exposed,
    }
    return bytes(r.descriptor), list(r.fds), counters


def attach_raw(descriptor, fds, cbool validate_full=False, cbool spill_files=False):
    cdef cstring desc = bytes(descriptor)
    cdef vector[int] cfds = fd_vector(fds)
    cdef AttachOptions options
    options.validate_full = validate_full
    options.spill_files = spill_files
    cdef CResult[SharedObject] result
    with nogil:
        result = Attach(deref(ZerrowPool.Instance()), desc, cfds, options)
    check_share(result.status())
    return wrap_shared_object(GetResultValue(move(result)))


def send_raw(int sock, descriptor, fds, int timeout_ms=-1):
    cdef cstring desc = bytes(descriptor)
    cdef vector[int] cfds = fd_vector(fds)
    cdef CStatus st
    with nogil:
        st = SendDescriptor(sock, desc, cfds, timeout_ms)
    check_share(st)


def recv_raw(int sock, int timeout_ms=-1):
    """Returns (descriptor, fds); the caller owns the fds."""
    cdef CResult[Received] result
    with nogil:
        result = RecvDescriptor(sock, timeout_ms)
    check_share(result.status())
    cdef Received r = GetResultValue(move(result))
    return bytes(r.descriptor), list(r.fds)


def describe_raw(descriptor):
    """(nbytes, nbuffers) referenced by a descriptor."""
    cdef CResult[ReferenceTotals] result = Totals(bytes(descriptor))
    check_share(result.status())
    cdef ReferenceTotals totals = GetResultValue(move(result))
    return totals.nbytes, totals.nbuffers


def mark_spilled_raw(descriptor):
    """The descriptor with every segment marked as a spill file (kind 3)."""
    cdef CResult[cstring] result = MarkSpilled(bytes(descriptor))
    check_share(result.status())
    return bytes(GetResultValue(move(result)))


def segment_kinds_raw(descriptor):
    """Each segment's kind (1 memfd, 2 kernel-module file, 3 spill file), in order."""
    cdef CResult[vector[uint8_t]] result = SegmentKinds(bytes(descriptor))
    check_share(result.status())
    return list(GetResultValue(move(result)))
