"""Message framing between the coordinator and its workers.

One AF_UNIX stream socket per worker carries pickled control messages, each
optionally accompanied by file descriptors (SCM_RIGHTS).  A message is one or
more frames; the kernel caps a single ``sendmsg`` at 253 descriptors, so a
message with more fds is split into continuation frames.

Frame layout: ``<u32 payload length><u32 fds that follow in later frames>``
followed by the payload.  The descriptors of a frame travel with its first
byte, so the receiver reads the 8-byte header with ``recvmsg`` and gets them.
"""
from __future__ import annotations

import array
import pickle
import socket
import struct

_HEADER = struct.Struct("<II")
MAX_FDS_PER_FRAME = 250


class PeerClosed(ConnectionError):
    """The other end of the socket went away (a worker died or exited)."""


def send_msg(sock: socket.socket, obj, fds=()) -> None:
    """Send ``obj`` (picklable) plus ``fds`` (ints, not closed here)."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    fds = list(fds)
    chunks = [fds[i:i + MAX_FDS_PER_FRAME] for i in range(0, len(fds), MAX_FDS_PER_FRAME)] or [[]]
    remaining = len(fds) - len(chunks[0])
    _send_frame(sock, _HEADER.pack(len(payload), remaining) + payload, chunks[0])
    for chunk in chunks[1:]:
        remaining -= len(chunk)
        _send_frame(sock, _HEADER.pack(0, remaining), chunk)


def _send_frame(sock, data: bytes, fds) -> None:
    view = memoryview(data)
    if fds:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        sent = sock.sendmsg([view], anc)
        view = view[sent:]
    while len(view):
        sent = sock.send(view)
        view = view[sent:]


def recv_msg(sock: socket.socket):
    """Receive one message; returns ``(obj, fds)``.  The caller owns ``fds``."""
    fds: list[int] = []
    try:
        length, more = _recv_header(sock, fds)
        payload = _recv_exact(sock, length)
        while more:
            _, more = _recv_header(sock, fds)
        return pickle.loads(payload), fds
    except BaseException:
        close_fds(fds)
        raise


def _recv_header(sock, fds: list):
    anc_size = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * array.array("i").itemsize)
    data, anc, flags, _ = sock.recvmsg(_HEADER.size, anc_size, socket.MSG_CMSG_CLOEXEC)
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(cdata[: len(cdata) - (len(cdata) % arr.itemsize)])
            fds.extend(arr)
    if not data:
        raise PeerClosed("peer closed the connection")
    if flags & socket.MSG_CTRUNC:
        raise OSError("file descriptors were truncated in transit (raise RLIMIT_NOFILE)")
    if len(data) < _HEADER.size:
        data += _recv_exact(sock, _HEADER.size - len(data))
    return _HEADER.unpack(data)


def _recv_exact(sock, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    while len(view):
        got = sock.recv_into(view)
        if not got:
            raise PeerClosed("peer closed the connection mid-message")
        view = view[got:]
    return bytes(buf)


def close_fds(fds) -> None:
    import os

    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def raise_fd_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit: big DAGs hold many fds."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
