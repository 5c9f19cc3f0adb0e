"""Transports: how a node's output travels to its consumers.

``zerrow``: the output is built in the worker's ``zerrow_pool.scope()``
segments and shared as a descriptor + read-only memfds (zero-copy; buffers
that came from inputs are re-referenced, not copied).

``copy``: the baseline that pipelines use today.  The output is written as an
uncompressed Arrow IPC file without a name (O_TMPFILE) in a private run
directory under /dev/shm (or ``$ZERROW_COPY_DIR``), passed on as a read-only
descriptor, and consumers read it with ``pyarrow.memory_map`` (one copy per
edge producer, no decode cache).

Both expose the same worker-side calls (``scope``, ``publish``) and the same
coordinator-side call (``payload``), so the runtime is transport-agnostic.
"""
from __future__ import annotations

import contextlib
import errno
import os

import pyarrow as pa

from . import rundirs, zerrow_api
from .budget import fmt_bytes
from .payloads import FilePayload, SharePayload, write_file
from .specs import Kind, OutputCounters, Published
from .rundirs import COPY_DIR_ENV


class CopyDirFull(OSError):
    """The copy transport's directory has no room for a node's output."""


class Transport:
    name = "?"
    uses_cache = False
    # First-run guess of a node's new memory, as a multiple of its inputs' bytes.
    estimate_factor = 1.0
    # Outputs up to this size are copied into memory of their own before they
    # are published (0: never); see worker.run_task.
    small_output_bytes = 0

    def scope(self, expected_bytes: int = 0):
        """Context manager a node runs in (worker side); ``expected_bytes``:
        what the node allocated at most last time, 0 if unknown."""
        return contextlib.nullcontext()

    def publish(self, obj, out_dir: str, keep_free: bool = False):
        """Make ``obj`` (Table or array) available to other processes.

        ``keep_free``: memory is plentiful (no budget), so a transport may keep
        what the node freed resident for its next tasks.

        Returns ``(spec, fds, done)``: a picklable description, fds to send
        along, and a callable to run once they are sent.
        """
        raise NotImplementedError

    def payload(self, spec: Published, fds: list):
        """Coordinator side: wrap a worker's published result."""
        if spec.kind == Kind.FILE:
            return FilePayload(fds[0], spec.rows, spec.nbytes, spec.counters)
        return SharePayload(spec.descriptor, fds, spec.rows, spec.nbytes, spec.counters)


def _rows(obj) -> int:
    return obj.num_rows if hasattr(obj, "num_rows") else len(obj)


class CopyTransport(Transport):
    """Arrow IPC files in /dev/shm, memory-mapped by consumers."""

    name = "copy"
    estimate_factor = 1.3  # outputs are written whole, plus IPC framing/padding

    def publish(self, obj, out_dir, keep_free=False):
        if not isinstance(obj, pa.Table):
            raise TypeError("the copy transport publishes tables only")
        fd = rundirs.anonymous_file(out_dir)
        try:
            written = write_file(fd, obj)
            ro = rundirs.reopen_read_only(fd)
        except OSError as e:
            if e.errno != errno.ENOSPC and "No space left" not in str(e):
                raise
            raise _no_room(out_dir, obj.nbytes) from None
        finally:
            os.close(fd)
        nbytes = obj.nbytes  # ~2 us per chunk: asked once
        counters = OutputCounters(bytes_copied=nbytes, bytes_exposed=written)
        spec = Published(Kind.FILE, obj.num_rows, nbytes, counters, fds=(0, 1))
        return spec, [ro], lambda: os.close(ro)


def _no_room(out_dir: str, nbytes: int) -> CopyDirFull:
    st = os.statvfs(out_dir)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    return CopyDirFull(
        errno.ENOSPC,
        f"the copy transport ran out of space writing a {fmt_bytes(nbytes)} output into "
        f"{out_dir} (that filesystem holds {fmt_bytes(size)}, {fmt_bytes(free)} free now). "
        f"Give it more room (Docker: docker run --shm-size=4g), point {COPY_DIR_ENV} at a "
        "directory with space, or use the zerrow transport, which needs no files")


class ZerrowTransport(Transport):
    """memfd-backed shared IPC through zerrow_pool.share / attach."""

    name = "zerrow"
    small_output_bytes = 1 << 20
    uses_cache = True

    def __init__(self):
        self.zp = zerrow_api.require()

    def scope(self, expected_bytes: int = 0):
        return self.zp.scope(expected_bytes=expected_bytes)

    def publish(self, obj, out_dir, keep_free=False):
        # Unsealed: readers still get read-only fds, and the worker's pool takes
        # the segments back once the kernel reports that no reader holds them
        # any more (a sealed segment could never be written again); with
        # keep_free they come back warm, but the free memory in them counts
        # against a memory budget until then, so only without one.
        share = self.zp.share(obj, seal=False, keep_free=keep_free)
        spec = Published(Kind.SHARE, _rows(obj), int(share.nbytes), OutputCounters.of_share(share),
                         share.descriptor, (0, len(share.fds)))
        return spec, list(share.fds), share.close


def transport_class(name: str) -> type:
    """The Transport class named ``name``; raises a clear error for an unknown name."""
    if name == "copy":
        return CopyTransport
    if name == "zerrow":
        return ZerrowTransport
    raise ValueError(f"unknown transport {name!r}: use 'zerrow' or 'copy'")


def get_transport(name: str) -> Transport:
    """``"zerrow"`` or ``"copy"``; raises a clear error for anything else."""
    return transport_class(name)()
