"""The transport frame (docs/SHARED_IPC.md, "Transport") written in pure Python.

The same bytes as the C++ layer (csrc/fd_transport.*, ``_sharing.send_frame``):

    header        16 bytes, one sendmsg, carrying fds[0 : min(n, 250)] as SCM_RIGHTS:
                  u32 magic "MWRZ", u32 nfds, u64 payload_len (native order)
    payload       payload_len bytes
    continuation  one byte 'F' per batch of at most 250 further fds

It is small enough to write twice, and tests/test_frame.py holds both writers
to the same frame in both directions. This one serves the service socket, at
both ends: the ``zerrow run`` client must start without the compiled core
(it loads pyarrow). Frames between the coordinator and its workers keep the
C++ writer, which shares carry too. Importing this module imports no more
than the standard library.
"""
from __future__ import annotations

import array
import errno
import os
import pickle
import socket
import struct

MAGIC = 0x5A52574D  # "MWRZ" in memory
HEADER = struct.Struct("=IIQ")
MAX_FDS_PER_MESSAGE = 250  # the kernel's SCM_MAX_FD is 253
MAX_PAYLOAD_BYTES = 1 << 30
_CONTROL_BYTES = socket.CMSG_SPACE(253 * array.array("i").itemsize)
_STEP = 1 << 20  # the payload buffer grows as bytes arrive: a bogus length costs nothing up front


class PeerClosed(ConnectionError):
    """The other end of the socket went away (a worker, the service or a client)."""


class FrameError(OSError):
    """What arrived is not a well-formed frame (errno ``EPROTO``, as the C++ reader's)."""

    def __init__(self, message: str):
        super().__init__(errno.EPROTO, message)


def close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def send_msg(sock: socket.socket, obj, fds=()) -> None:
    """Send ``obj`` (picklable) plus ``fds`` (ints, not closed here) in one frame."""
    send_frame(sock, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), fds)


def recv_msg(sock: socket.socket):
    """Receive one message sent with :func:`send_msg`; returns ``(obj, fds)``, the caller owns ``fds``."""
    return unpickle(*recv_frame(sock))


def unpickle(payload: bytes, fds: list):
    """``(obj, fds)`` of a frame whose payload is a pickle; closes ``fds`` if it does not load."""
    try:
        return pickle.loads(payload), fds
    except BaseException:
        close_fds(fds)
        raise


def send_frame(sock: socket.socket, payload: bytes, fds=()) -> None:
    """Write one frame: ``payload`` plus ``fds`` (not closed here); honours the socket's timeout."""
    fds = list(fds)
    _send_with_fds(sock, HEADER.pack(MAGIC, len(fds), len(payload)), fds[:MAX_FDS_PER_MESSAGE])
    if payload:
        sock.sendall(payload, socket.MSG_NOSIGNAL)
    for at in range(MAX_FDS_PER_MESSAGE, len(fds), MAX_FDS_PER_MESSAGE):
        _send_with_fds(sock, b"F", fds[at:at + MAX_FDS_PER_MESSAGE])


def recv_frame(sock: socket.socket) -> tuple[bytes, list[int]]:
    """Read one frame: ``(payload, fds)``; the caller owns the fds.

    Raises :class:`PeerClosed` when the peer closed the connection,
    :class:`FrameError` on a malformed frame (all fds received so far closed).
    """
    fds: list[int] = []
    try:
        magic, nfds, length = HEADER.unpack(_recv_exact(sock, HEADER.size, fds, mid_message=False))
        if magic != MAGIC:
            raise FrameError("not a zerrow message (bad frame magic)")
        if length > MAX_PAYLOAD_BYTES:
            raise FrameError(f"frame of {length} bytes is too large")
        chunks, got = [], 0
        while got < length:
            chunks.append(_recv_exact(sock, min(_STEP, length - got), fds, mid_message=True))
            got += len(chunks[-1])
        while len(fds) < nfds:
            if _recv_exact(sock, 1, fds, mid_message=True) != b"F":
                raise FrameError("malformed fd continuation")
        if len(fds) != nfds:
            raise FrameError(f"expected {nfds} fds, received {len(fds)}")
        return b"".join(chunks), fds
    except BaseException:
        close_fds(fds)
        raise


def _send_with_fds(sock, data: bytes, fds) -> None:
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = sock.sendmsg([data], ancillary, socket.MSG_NOSIGNAL)
    if sent < len(data):  # the fds went with the first byte
        sock.sendall(data[sent:], socket.MSG_NOSIGNAL)


def _recv_exact(sock, n: int, fds: list, *, mid_message: bool) -> bytes:
    """Exactly ``n`` bytes; fds that arrive alongside are appended to ``fds``."""
    parts, got = [], 0
    while got < n:
        data, ancillary, flags, _ = sock.recvmsg(n - got, _CONTROL_BYTES, socket.MSG_CMSG_CLOEXEC)
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                received = array.array("i")
                received.frombytes(raw[:len(raw) - len(raw) % received.itemsize])
                fds.extend(received)
        if flags & socket.MSG_CTRUNC:
            raise FrameError("received more fds than fit; message dropped")
        if not data:
            raise PeerClosed("connection closed" if got == 0 and not mid_message
                             else "connection closed in the middle of a message")
        parts.append(data)
        got += len(data)
    return b"".join(parts)
