# Included by _core.pyx: bindings of the sharing layer (csrc/share_*.h).

from libcpp.string cimport string as cstring

from pyarrow.lib cimport (
    pyarrow_wrap_array, pyarrow_wrap_batch, pyarrow_wrap_chunked_array, pyarrow_wrap_table,
)


cdef extern from "shared_object.h" namespace "zerrow" nogil:
    cdef cppclass SharedObject:
        pass
    SharedObject FromTable(const shared_ptr[CTable]& table)
    SharedObject FromRecordBatch(const shared_ptr[CRecordBatch]& batch)
    SharedObject FromArray(const shared_ptr[CArray]& array)
    SharedObject FromChunkedArray(const shared_ptr[CChunkedArray]& chunked)


cdef extern from "share_export.h" namespace "zerrow" nogil:
    cdef cppclass ShareResult:
        cstring descriptor
        vector[int] fds
        int64_t nbytes, nbuffers, bytes_zero_copy, bytes_copied, bytes_exposed


cdef extern from "fd_transport.h" namespace "zerrow" nogil:
    cdef cppclass Received:
        cstring descriptor
        vector[int] fds
    CStatus SendDescriptor(int sock, cstring descriptor, const vector[int]& fds, int timeout_ms)


cdef extern from "share_api.h" namespace "zerrow::api" nogil:
    cdef cppclass Attached:
        int kind
        shared_ptr[CTable] table
        shared_ptr[CRecordBatch] batch
        shared_ptr[CArray] array
        shared_ptr[CChunkedArray] chunked
    CStatus Share(const SharedObject& obj, cbool seal, cbool strict_exposure, cbool keep_free, ShareResult* out)
    CStatus Attach(const cstring& descriptor, const vector[int]& fds, cbool validate_full, Attached* out)
    CStatus Recv(int sock, int timeout_ms, Received* out)
    CStatus Describe(const cstring& descriptor, int64_t* nbytes, int64_t* nbuffers)


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
    """


cdef int raise_share_error(const CStatus& st) except -1:
    message = st.message().decode("utf-8", "replace")
    if st.IsIOError() and message.startswith("zerrow: connection closed"):
        raise EOFError(message)
    if st.IsIOError() and message == "zerrow: timed out":
        raise TimeoutError(message)
    raise ShareError(message)


cdef SharedObject shared_object_of(obj) except *:
    if isinstance(obj, pa.Table):
        return FromTable(pyarrow_unwrap_table(obj))
    if isinstance(obj, pa.RecordBatch):
        return FromRecordBatch(pyarrow_unwrap_batch(obj))
    if isinstance(obj, pa.ChunkedArray):
        return FromChunkedArray(pyarrow_unwrap_chunked_array(obj))
    if isinstance(obj, pa.Array):
        return FromArray(pyarrow_unwrap_array(obj))
    raise TypeError(f"share() takes a pyarrow Table, RecordBatch, Array or ChunkedArray, not {type(obj).__name__}")


def share_raw(obj, cbool seal, cbool strict_exposure=False, cbool keep_free=False):
    """Returns (descriptor, fds, stats dict); the caller owns the fds."""
    cdef SharedObject so = shared_object_of(obj)
    cdef ShareResult r
    cdef CStatus st
    with nogil:
        st = Share(so, seal, strict_exposure, keep_free, &r)
    if not st.ok():
        raise_share_error(st)
    stats = {
        "nbytes": r.nbytes, "nbuffers": r.nbuffers, "bytes_shared_zero_copy": r.bytes_zero_copy,
        "bytes_copied": r.bytes_copied, "bytes_exposed": r.bytes_exposed,
    }
    return bytes(r.descriptor), list(r.fds), stats


def attach_raw(descriptor, fds, cbool validate_full=False):
    cdef cstring desc = bytes(descriptor)
    cdef vector[int] cfds
    for fd in fds:
        cfds.push_back(<int> fd)
    cdef Attached out
    cdef CStatus st
    with nogil:
        st = Attach(desc, cfds, validate_full, &out)
    if not st.ok():
        raise_share_error(st)
    if out.kind == 1:
        return pyarrow_wrap_table(out.table)
    if out.kind == 2:
        return pyarrow_wrap_batch(out.batch)
    if out.kind == 3:
        return pyarrow_wrap_array(out.array)
    return pyarrow_wrap_chunked_array(out.chunked)


def send_raw(int sock, descriptor, fds, int timeout_ms=-1):
    cdef cstring desc = bytes(descriptor)
    cdef vector[int] cfds
    for fd in fds:
        cfds.push_back(<int> fd)
    cdef CStatus st
    with nogil:
        st = SendDescriptor(sock, desc, cfds, timeout_ms)
    if not st.ok():
        raise_share_error(st)


def recv_raw(int sock, int timeout_ms=-1):
    """Returns (descriptor, fds); the caller owns the fds."""
    cdef Received r
    cdef CStatus st
    with nogil:
        st = Recv(sock, timeout_ms, &r)
    if not st.ok():
        raise_share_error(st)
    return bytes(r.descriptor), list(r.fds)


def describe_raw(descriptor):
    """(nbytes, nbuffers) referenced by a descriptor."""
    cdef cstring desc = bytes(descriptor)
    cdef int64_t nbytes = 0, nbuffers = 0
    cdef CStatus st = Describe(desc, &nbytes, &nbuffers)
    if not st.ok():
        raise_share_error(st)
    return nbytes, nbuffers
