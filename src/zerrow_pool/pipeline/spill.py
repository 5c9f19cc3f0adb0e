"""Spilling cold intermediates to local disk.

A spilled intermediate keeps its form: a share's segments are copied to files
on disk at the same offsets (``sendfile``, holes skipped) and its descriptor
marks them as spill files (segment kind 3, docs/SHARED_IPC.md), so consumers
attach it as before, now mapping the page cache; a copy-transport IPC file
is copied as it is.  The files have no name (``rundirs.anonymous_file``) and
are held read-only, so spilling frees exactly the shared memory the payload
held.  They go to a private run directory under ``spill_dir`` (default
``$ZERROW_SPILL_DIR``, else the system temp directory), see ``rundirs``.
"""
from __future__ import annotations

import errno
import mmap
import os
import shutil

from . import rundirs
from .wire import close_fds
from .payloads import KERNEL_FILE, SPILL_FILE, ColumnsPayload, FilePayload, SharePayload, file_identity

PREFIX = "zerrow-spill"
_CHUNK = 64 << 20


class Spiller:
    """Spills payloads into a run directory made on first use.

    Parameters
    ----------
    base : str, optional
        Directory under which the private ``zerrow-spill-<uid>/run-...``
        directory is made; ``$ZERROW_SPILL_DIR`` or the temp directory by
        default (local disk, never /dev/shm: that is RAM).
    """

    def __init__(self, base: str | None = None):
        self.base = base or rundirs.spill_base()
        self.dir = None  # made on the first spill
        self.bytes_spilled = 0
        self.count = 0
        parent = os.path.join(self.base, f"{PREFIX}-{os.getuid()}")
        if os.path.isdir(parent) and not os.path.islink(parent):
            rundirs.sweep(parent)  # what runs killed earlier left behind

    def spill(self, payload):
        """Write ``payload`` to disk and release its memory; returns the payload on disk."""
        if self.dir is None:
            self.dir = rundirs.make_run_dir(self.base, PREFIX)
        files = _SpillFiles(self.dir)
        try:
            if isinstance(payload, FilePayload):
                out = FilePayload(files.copy_of(payload.fd), payload.rows, payload.nbytes,
                                  payload.counters, spilled=True)
            elif isinstance(payload, SharePayload):
                out = files.share(payload)
            elif isinstance(payload, ColumnsPayload):
                out = ColumnsPayload(payload.schema, files.columns(payload.columns), payload.rows,
                                     spilled=True)
            else:
                raise TypeError(f"cannot spill {payload!r}")
        finally:
            files.close()
        payload.close()
        out.disk_bytes = files.bytes_written
        self.bytes_spilled += out.disk_bytes
        self.count += 1
        return out

    def cleanup(self) -> None:
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class _SpillFiles:
    """The spill files of one payload: each file it holds copied once, held read-only."""

    def __init__(self, directory: str):
        self.directory = directory
        self.copies: dict = {}  # file identity -> read-only fd of its copy
        self.bytes_written = 0

    def copy_of(self, fd: int, *, mapped: bool = False) -> int:
        """A new read-only fd of the copy of ``fd``'s file (copied on first use;
        ``mapped``: see ``copy_extents``)."""
        key = file_identity(fd)
        if key not in self.copies:
            out = rundirs.anonymous_file(self.directory)
            try:
                self.bytes_written += copy_extents(fd, out, mapped=mapped)
                self.copies[key] = rundirs.reopen_read_only(out)
            finally:
                os.close(out)
        return os.dup(self.copies[key])

    def share(self, payload: SharePayload) -> SharePayload:
        from .._sharing import mark_spilled, segment_kinds  # shares exist only where the core loads

        descriptor = mark_spilled(payload.descriptor)  # fails, if at all, before any copy
        fds: list = []
        try:
            for fd, kind in zip(payload.fds, segment_kinds(payload.descriptor)):
                # Segments already on disk (a node passed a spilled input on) stay as they are.
                fds.append(os.dup(fd) if kind == SPILL_FILE
                           else self.copy_of(fd, mapped=kind == KERNEL_FILE))
        except BaseException:
            close_fds(fds)
            raise
        return SharePayload(descriptor, fds, payload.rows, payload.nbytes, payload.counters,
                            spilled=True)

    def columns(self, columns: list) -> list:
        """A decoded source's parts on disk; returns its columns again, each entry
        acquired once more for the spilled payload.

        Its decode-cache entries move to disk in place: they stay cached, on disk,
        so a later run maps them from the page cache instead of decoding them again
        (a budget that cannot hold a decoded input would otherwise have it decoded
        and spilled by every run). An entry another payload also reads stays in
        memory, since that reader keeps it there anyway. All or none: on failure
        every entry is left as it was."""
        moved: list = []  # (entry, its payload on disk)
        try:
            for col in columns:
                for e in col:
                    if e.refs == 1 and not e.payload.spilled:  # ours alone, in memory
                        moved.append((e, self.share(e.payload)))
        except BaseException:
            for _, p in moved:
                p.close()
            raise
        for e, p in moved:
            e.replace_payload(p)
        return [[e.acquire() for e in col] for col in columns]

    def close(self) -> None:
        for fd in self.copies.values():
            os.close(fd)
        self.copies = {}


def copy_extents(src: int, dst: int, *, mapped: bool = False) -> int:
    """Copy file ``src``'s data into the empty file ``dst`` at the same offsets,
    skipping holes, and give ``dst`` the size of ``src``; returns the bytes copied.

    ``sendfile`` moves the pages inside the kernel (half the time of writing
    them from a mapping here, bench/RESULTS.md). With ``mapped`` (a
    kernel-module file, whose only interface for data is ``mmap``), or where
    ``sendfile`` cannot read the file, the file (or that extent) is written
    from a read-only mapping instead."""
    size = os.fstat(src).st_size
    copy = _write_range_mapped if mapped else _sendfile_range
    extents = [(0, size)] if mapped else _extents(src, size)
    copied = sum(copy(src, dst, start, end, size) for start, end in extents)
    os.ftruncate(dst, size)
    return copied


def _extents(fd: int, size: int):
    """[start, end) of each data extent of ``fd``; from where the file cannot
    tell (no SEEK_DATA, or a seek that does not move), the rest of it whole."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size) if start < size else size
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data past pos
                return
            if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.ESPIPE):
                raise
            start, end = pos, size
        if start < pos or end <= start:  # a seek that ignores SEEK_DATA (noop_llseek)
            start, end = pos, size
        yield start, end
        pos = end


def _sendfile_range(src: int, dst: int, start: int, end: int, size: int) -> int:
    """[start, end) of ``src`` to the same place in ``dst``; through a mapping
    where ``sendfile`` cannot read ``src``."""
    os.lseek(dst, start, os.SEEK_SET)  # sendfile writes at dst's position
    off = start
    try:
        while off < end:
            n = os.sendfile(dst, src, off, min(end - off, _CHUNK))
            if n == 0:  # the file ended early
                break
            off += n
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        return _write_range_mapped(src, dst, start, end, size)
    return off - start


def _write_range_mapped(src: int, dst: int, start: int, end: int, size: int) -> int:
    with mmap.mmap(src, size, prot=mmap.PROT_READ) as m:
        view = memoryview(m)
        try:
            off = start
            while off < end:
                off += os.pwrite(dst, view[off:min(end, off + _CHUNK)], off)
        finally:
            view.release()
    return end - start
