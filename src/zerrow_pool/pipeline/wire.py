"""Message framing between the coordinator and its workers.

One AF_UNIX stream socket per peer carries pickled control messages, each
optionally accompanied by file descriptors (SCM_RIGHTS). A message is one
transport frame of the sharing layer (docs/SHARED_IPC.md, "Transport";
csrc/fd_transport.*), whose payload here is a pickle instead of a descriptor:
one framing for shares and control messages, including the split of more fds
than the kernel takes in one message (``_core.MAX_FDS_PER_MESSAGE``). The service
socket carries the same messages framed by the pure-Python writer of that
frame (``zerrow_pool._frame``), so that its client need not load the core.
"""
from __future__ import annotations

import errno
import pickle
import socket

from .._frame import PeerClosed, close_fds, unpickle
from .._sharing import ShareError, recv_frame, send_frame

__all__ = ["PeerClosed", "close_fds", "raise_fd_limit", "recv_msg", "send_msg"]


def send_msg(sock: socket.socket, obj, fds=()) -> None:
    """Send ``obj`` (picklable) plus ``fds`` (ints, not closed here)."""
    try:
        send_frame(sock, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), fds)
    except ShareError as e:
        raise _as_os_error(e) from None


def recv_msg(sock: socket.socket):
    """Receive one message; returns ``(obj, fds)``.  The caller owns ``fds``."""
    try:
        payload, fds = recv_frame(sock)
    except EOFError as e:
        raise PeerClosed(str(e)) from None
    except ShareError as e:
        raise _as_os_error(e) from None
    return unpickle(payload, fds)


def _as_os_error(e: ShareError) -> OSError:
    """A transport failure as the socket module reports them (BrokenPipeError for EPIPE...)."""
    return OSError(e.errno or errno.EPROTO, str(e))


def raise_fd_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit: big DAGs hold many fds."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
