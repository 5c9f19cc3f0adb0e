"""Handing Arrow objects to other processes without copying: share, attach, send, recv."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from ._pyarrow_check import load_core

_core = load_core()

ShareError = _core.ShareError


@dataclass(frozen=True, slots=True)
class ShareCounters:
    """What a share references, and how its buffers got there (what :func:`send` returns).

    The names are the C++ layer's (``ShareResult``), the pipeline's
    (``OutputCounters``) and its report's (``NodeRecord``, ``EdgeRecord``).

    Attributes
    ----------
    nbytes, nbuffers : int
        Bytes and buffers the descriptor references.
    bytes_zero_copy : int or None
        Bytes referenced in place: in this process's pool, in segments attached
        from another process, or placed by the kernel module.
    bytes_copied : int or None
        Bytes copied once into a fresh segment (memory zerrow could not place).
    bytes_exposed : int or None
        Other live bytes a consumer could read in the shared segments, alignment
        padding included.

    The last three are None for a share received with :func:`recv_share`:
    only its producer knows them.
    """

    nbytes: int
    nbuffers: int
    bytes_zero_copy: int | None = None
    bytes_copied: int | None = None
    bytes_exposed: int | None = None


class Share:
    """An object described for another process: a descriptor plus read-only fds.

    Parameters
    ----------
    descriptor : bytes
        The object's layout and, for every buffer, a (segment, offset, length)
        reference (format: docs/SHARED_IPC.md).
    fds : list of int
        The segments' files, opened read-only. The Share owns them: :meth:`close`
        (or garbage collection) closes them.
    nbytes, nbuffers, bytes_zero_copy, bytes_copied, bytes_exposed : int, optional
        The counters (see :class:`ShareCounters`); nbytes and nbuffers are read
        from the descriptor when not given.

    Attributes
    ----------
    descriptor, fds
        As given.
    nbytes, nbuffers, bytes_zero_copy, bytes_copied, bytes_exposed
        The counters, also as one object: :attr:`counters`.
    """

    __slots__ = ("descriptor", "fds", "nbytes", "nbuffers", "bytes_zero_copy", "bytes_copied",
                 "bytes_exposed", "_closed", "__weakref__")

    def __init__(self, descriptor, fds, nbytes=None, nbuffers=None, bytes_zero_copy=None,
                 bytes_copied=None, bytes_exposed=None):
        self.descriptor = bytes(descriptor)
        self.fds = list(fds)
        self._closed = False
        if nbytes is None or nbuffers is None:
            nbytes, nbuffers = _core.describe_raw(self.descriptor)
        self.nbytes = nbytes
        self.nbuffers = nbuffers
        self.bytes_zero_copy = bytes_zero_copy
        self.bytes_copied = bytes_copied
        self.bytes_exposed = bytes_exposed

    @property
    def counters(self) -> ShareCounters:
        """The share's counters, as one immutable object."""
        return ShareCounters(self.nbytes, self.nbuffers, self.bytes_zero_copy, self.bytes_copied,
                             self.bytes_exposed)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran: the fds are gone."""
        return self._closed

    def attach(self, *, validate_full=False, spill_files=False):
        """Map this share and rebuild its object, without copying.

        Parameters
        ----------
        validate_full, spill_files : bool, default False
            See :func:`attach`.

        Returns
        -------
        pyarrow.Table, RecordBatch, Array or ChunkedArray
            The object, its buffers mapped read-only.

        Raises
        ------
        ShareError
            The share is closed, or its descriptor or fds are not valid.
        """
        if self.closed:
            raise ShareError("share is closed")
        return _core.attach_raw(self.descriptor, self.fds, validate_full, spill_files)

    def close(self) -> None:
        """Close the fds; objects already attached stay valid. Closing twice does nothing."""
        fds, self.fds = self.fds, []
        self._closed = True
        for fd in fds:
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        return (f"Share(nbytes={self.nbytes}, nbuffers={self.nbuffers}, segments={len(self.fds)}, "
                f"zero_copy={self.bytes_zero_copy}, copied={self.bytes_copied}, "
                f"exposed={self.bytes_exposed}{', closed' if self.closed else ''})")


def share(obj, *, seal=True, strict_exposure=False, keep_free=False) -> Share:
    """Describe a Table, RecordBatch, Array or ChunkedArray for another process, in O(#buffers).

    Buffers in this process's zerrow pool are referenced in place and the
    segments they lie in are frozen: no new allocation goes there, and the
    free memory in them is punched out (so readers see zeros and the share
    pins only its own pages). Buffers attached from another process are
    referenced again (resharing). Anything else is placed by the kernel module
    when it is loaded, or copied once into a fresh segment and counted in
    ``bytes_copied``.

    Parameters
    ----------
    obj : pyarrow.Table, RecordBatch, Array or ChunkedArray
        What to share; children and dictionaries included.
    seal : bool, default True
        Seal the frozen segments against any write (this process's own view of
        them becomes read-only too): they are never reused. With ``False`` they
        are sealed only against shrinking, and the pool takes each back once
        its buffers are freed here and the kernel reports that no other process
        holds its file any more (no fd, mapping or fd in flight; counted in
        ``stats().segments_reclaimed``).
    strict_exposure : bool, default False
        The kernel module works on whole pages: the partial first and last page
        of a buffer it places may hold unrelated bytes of this process (counted
        in ``bytes_exposed``). ``True`` copies those edge pages instead (counted
        in ``bytes_copied``).
    keep_free : bool, default False
        With ``seal=False``: zero the free memory of frozen segments instead of
        punching it, so that it comes back warm when the segment is reclaimed
        (it stays resident until then).

    Returns
    -------
    Share
        The descriptor and read-only fds (owned by the Share: close it, or use
        it as a context manager), with the counters of :class:`ShareCounters`.

    Raises
    ------
    TypeError
        ``obj`` is not one of the types above.
    ShareError
        The object cannot be shared (a buffer not in CPU memory, a dictionary
        of dictionaries) or a system call failed (``errno`` set).
    """
    descriptor, fds, stats = _core.share_raw(obj, bool(seal), bool(strict_exposure), bool(keep_free))
    _core.keep_cow_handler_at_exit()
    return Share(descriptor, fds, **stats)


def attach(descriptor, fds, *, validate_full=False, spill_files=False):
    """Rebuild a shared object from its descriptor and fds, without copying.

    Every count, offset and length is checked against the descriptor and the
    files' real sizes before anything is mapped. Segments are mapped read-only,
    once per file while any mapping is alive; the result's buffers keep their
    mappings alive.

    Parameters
    ----------
    descriptor : bytes
        :attr:`Share.descriptor`, as the producer made it.
    fds : sequence of int
        The segments' files, in the descriptor's order: sealed memfds or zerrow
        kernel-module files. They stay owned by the caller (attach keeps
        duplicates of what it maps).
    validate_full : bool, default False
        Also check every value (offsets, UTF-8...), in time proportional to the
        data, and require every memfd to be sealed against writes (shared with
        ``seal=True``) so that the values cannot change afterwards: use it for
        producers you do not trust.
    spill_files : bool, default False
        Also accept segments of kind 3: spill files, copies of segments on
        disk (see :func:`mark_spilled`). A plain file cannot be sealed, so
        whoever can write it could change or truncate it under the mapping
        (a read past a truncated end is a ``SIGBUS``): accept them only from
        a producer you trust. Cannot be combined with ``validate_full``.
        The pipeline runtime spills shares this way (:func:`mark_spilled`).

    Returns
    -------
    pyarrow.Table, RecordBatch, Array or ChunkedArray
        The kind of object that was shared.

    Raises
    ------
    ShareError
        The descriptor or an fd is not valid; the message names the problem.
    """
    return _core.attach_raw(descriptor, fds, bool(validate_full), bool(spill_files))


def mark_spilled(descriptor) -> bytes:
    """The descriptor with every segment marked as a spill file (kind 3).

    For a copy of each of the share's segment files written to a file on disk
    at the same offsets, sent in the same order; consumers attach it with
    ``spill_files=True``. Raises :class:`ShareError` on a malformed descriptor.
    """
    return _core.mark_spilled_raw(descriptor)


def segment_kinds(descriptor) -> list:
    """Each segment's kind in a descriptor, in order: 1 a memfd, 2 a kernel-module
    file, 3 a spill file (docs/SHARED_IPC.md). Raises :class:`ShareError` on a
    malformed descriptor."""
    return _core.segment_kinds_raw(descriptor)


def _fileno(sock) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def _timeout_ms(sock) -> int:
    """A socket object's timeout in ms (-1: none), honoured by the C++ transport."""
    timeout = None if isinstance(sock, int) else getattr(sock, "gettimeout", lambda: None)()
    return -1 if timeout is None else int(timeout * 1000)


def send_frame(sock, payload: bytes, fds=()) -> None:
    """Write one transport frame: ``payload`` plus ``fds`` (not closed here).

    The frame is the one of docs/SHARED_IPC.md ("Transport"), written by the C++
    layer (csrc/fd_transport.*): fds beyond what the kernel takes in one message
    (``_core.MAX_FDS_PER_MESSAGE``) ride on continuation messages. Shares carry
    their descriptor in it; the pipeline runtime its pickled control messages.
    Honours the socket's timeout (``TimeoutError``).
    """
    _core.send_raw(_fileno(sock), payload, list(fds), _timeout_ms(sock))


def recv_frame(sock) -> tuple[bytes, list[int]]:
    """Read one frame written by :func:`send_frame`: ``(payload, fds)``; the caller owns the fds.

    Raises ``EOFError`` when the peer closed the connection, :class:`ShareError`
    on a malformed frame or a failed system call (with its ``errno``).
    """
    return _core.recv_raw(_fileno(sock), _timeout_ms(sock))


def send(sock, obj, *, seal=True, keep_free=False) -> ShareCounters:
    """Send an object (or a :class:`Share`) over an AF_UNIX stream socket, without copying it.

    Fds travel as SCM_RIGHTS, split across messages when there are more than
    the kernel allows in one (docs/SHARED_IPC.md, "Transport").

    Parameters
    ----------
    sock : socket.socket or int
        A connected ``AF_UNIX`` ``SOCK_STREAM`` socket, or its fd. A socket's
        timeout (``settimeout``) applies.
    obj : pyarrow.Table, RecordBatch, Array, ChunkedArray or Share
        An Arrow object is shared first (:func:`share`) and this side's fds are
        closed once sent; a :class:`Share` is sent as it is and stays open.
    seal, keep_free : bool
        Passed to :func:`share` (ignored for a Share).

    Returns
    -------
    ShareCounters
        What was sent, and how: ``bytes_zero_copy``, ``bytes_copied``...

    Raises
    ------
    ShareError
        The object cannot be shared, or sending failed (``errno`` set: ``EPIPE``
        when the peer is gone).
    TimeoutError
        The socket's timeout expired.
    """
    if isinstance(obj, Share):
        if obj.closed:
            raise ShareError("share is closed")
        send_frame(sock, obj.descriptor, obj.fds)
        return obj.counters
    with share(obj, seal=seal, keep_free=keep_free) as s:
        send_frame(sock, s.descriptor, s.fds)
    return s.counters


def recv_share(sock) -> Share:
    """Receive a share without mapping anything (for a process that only forwards it).

    Parameters
    ----------
    sock : socket.socket or int
        A connected ``AF_UNIX`` ``SOCK_STREAM`` socket, or its fd; its timeout applies.

    Returns
    -------
    Share
        The descriptor and fds (owned by the Share); only ``nbytes`` and
        ``nbuffers`` are known of its counters.

    Raises
    ------
    EOFError
        The peer closed the connection.
    ShareError
        The message is not a valid frame or descriptor.
    TimeoutError
        The socket's timeout expired.
    """
    descriptor, fds = recv_frame(sock)
    try:
        return Share(descriptor, fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def recv(sock, *, validate_full=False):
    """Receive and attach an object sent with :func:`send`, without copying.

    Parameters
    ----------
    sock : socket.socket or int
        A connected ``AF_UNIX`` ``SOCK_STREAM`` socket, or its fd; its timeout applies.
    validate_full : bool, default False
        Also check every value; see :func:`attach`.

    Returns
    -------
    pyarrow.Table, RecordBatch, Array or ChunkedArray
        The object, its buffers mapped read-only from the sender's segments.

    Raises
    ------
    EOFError
        The peer closed the connection.
    ShareError
        The message is not a valid share.
    TimeoutError
        The socket's timeout expired.
    """
    with recv_share(sock) as s:
        return s.attach(validate_full=validate_full)


class Channel:
    """One end of an AF_UNIX stream connection that carries Arrow objects.

    A thin wrapper over :func:`send`, :func:`recv` and :func:`recv_share` on
    one socket. Create a connected pair before starting the other process
    (``multiprocessing`` can pass either end to a child), or wrap a socket you
    connected yourself::

        a, b = Channel.pair()
        a.send(table)          # this process
        got = b.recv()         # the other process: the same table, not copied

    Parameters
    ----------
    sock : socket.socket
        A connected ``AF_UNIX`` ``SOCK_STREAM`` socket. The channel owns it:
        :meth:`close` closes it. Its timeout (``sock.settimeout``) applies to
        sends and receives.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock

    @classmethod
    def pair(cls):
        """Two connected channels.

        Returns
        -------
        tuple of Channel
            ``(a, b)``: what one sends the other receives, both ways.
        """
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a), cls(b)

    def send(self, obj, *, seal=True, keep_free=False) -> ShareCounters:
        """Share ``obj`` and send it; see :func:`send`.

        Parameters
        ----------
        obj : pyarrow.Table, RecordBatch, Array, ChunkedArray or Share
            What to send. Arrow objects are shared first (:func:`share`), and
            this side's fds are closed once sent.
        seal, keep_free : bool
            Passed to :func:`share`.

        Returns
        -------
        ShareCounters
            What was sent, and how: ``bytes_zero_copy``, ``bytes_copied`` etc.
        """
        return send(self.sock, obj, seal=seal, keep_free=keep_free)

    def recv(self, *, validate_full=False):
        """Receive the next object and attach it, without copying.

        Parameters
        ----------
        validate_full : bool, default False
            Check every value too (see :func:`attach`); for untrusted senders.

        Returns
        -------
        pyarrow.Table, RecordBatch, Array or ChunkedArray
            The object, its buffers mapped read-only from the sender's segments.

        Raises
        ------
        EOFError
            The other end closed the connection.
        ShareError
            The message is not a valid share.
        """
        return recv(self.sock, validate_full=validate_full)

    def recv_share(self) -> Share:
        """Receive the next share without mapping it (to forward it, or attach later)."""
        return recv_share(self.sock)

    def fileno(self) -> int:
        """The socket's file descriptor (for ``select``/``selectors``)."""
        return self.sock.fileno()

    def close(self) -> None:
        """Close the socket; objects already received stay valid."""
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
