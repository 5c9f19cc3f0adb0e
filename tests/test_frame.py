"""The pure-Python transport frame (zerrow_pool._frame) is the C++ layer's frame, both ways."""
import os
import socket
import threading

import pytest

from zerrow_pool import _frame, _sharing


def fd_for(text: str) -> int:
    fd = os.memfd_create("frame-test")
    os.write(fd, text.encode())
    return fd


def contents(fd: int) -> str:
    return os.pread(fd, 64, 0).decode()


WRITERS = {"python": _frame.send_frame, "c++": _sharing.send_frame}
READERS = {"python": _frame.recv_frame, "c++": _sharing.recv_frame}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("nfds,size", [(0, 0), (3, 10), (0, 3 << 20), (300, 1 << 20)])
def test_frames_cross_between_the_two_writers(writer, reader, nfds, size):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = [fd_for(f"fd {i}") for i in range(nfds)]
    payload = os.urandom(size)
    # more than a socket buffer holds: write while the other side reads
    t = threading.Thread(target=WRITERS[writer], args=(a, payload, fds))
    t.start()
    got, got_fds = READERS[reader](b)
    t.join()
    try:
        assert got == payload
        assert [contents(fd) for fd in got_fds] == [f"fd {i}" for i in range(nfds)]
    finally:
        _frame.close_fds(fds + got_fds)
        a.close()
        b.close()


def test_messages_round_trip_with_their_fds():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        fd = fd_for("hello")
        _frame.send_msg(a, {"kind": "result", "n": [1, 2]}, [fd])
        os.close(fd)
        msg, fds = _frame.recv_msg(b)
        assert msg == {"kind": "result", "n": [1, 2]} and [contents(f) for f in fds] == ["hello"]
        _frame.close_fds(fds)


def test_a_closed_peer_is_peer_closed_before_and_during_a_frame():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.close()
    with b, pytest.raises(_frame.PeerClosed, match="^connection closed$"):
        _frame.recv_frame(b)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(_frame.HEADER.pack(_frame.MAGIC, 0, 100) + b"only part")
    a.close()
    with b, pytest.raises(_frame.PeerClosed, match="in the middle of a message"):
        _frame.recv_frame(b)


def test_a_bad_frame_is_refused_and_its_fds_closed():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        fd = fd_for("x")
        _frame._send_with_fds(a, _frame.HEADER.pack(0x12345678, 1, 0), [fd])
        os.close(fd)
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(_frame.FrameError, match="bad frame magic") as e:
            _frame.recv_frame(b)
        assert e.value.errno is not None
        assert set(os.listdir("/proc/self/fd")) <= before  # the received fd is closed
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.sendall(_frame.HEADER.pack(_frame.MAGIC, 2, 0) + b"X")
        with pytest.raises(_frame.FrameError, match="malformed fd continuation"):
            _frame.recv_frame(b)


def test_the_socket_timeout_applies():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        b.settimeout(0.1)
        with pytest.raises(TimeoutError):
            _frame.recv_frame(b)
