"""Coordinator <-> worker framing: messages with many fds, peer death."""
import os
import socket

import pytest

from zerrow_pool.pipeline.wire import PeerClosed, close_fds, raise_fd_limit, recv_msg, send_msg


def test_many_fds_split_into_frames(tmp_path):
    raise_fd_limit()
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    fds = [os.dup(fd) for _ in range(600)]  # > 2 frames of 250
    a, b = socket.socketpair()
    try:
        send_msg(a, {"hello": list(range(1000))}, fds)
        send_msg(a, {"second": True})
        obj, got = recv_msg(b)
        assert obj == {"hello": list(range(1000))}
        assert len(got) == 600
        ino = os.fstat(fd).st_ino
        assert all(os.fstat(g).st_ino == ino for g in got)
        assert recv_msg(b) == ({"second": True}, [])
        close_fds(got)
    finally:
        close_fds(fds + [fd])
        a.close()
        b.close()


def test_peer_closed():
    a, b = socket.socketpair()
    a.close()
    with pytest.raises(PeerClosed):
        recv_msg(b)
    b.close()


def test_one_framing_for_shares_and_control_messages(tmp_path):
    """Control messages travel in the sharing layer's frame (docs/SHARED_IPC.md), 250 fds a message."""
    import pickle
    import struct

    from zerrow_pool import _core
    from zerrow_pool._sharing import recv_frame

    assert _core.MAX_FDS_PER_MESSAGE == 250
    path = tmp_path / "f"
    path.write_bytes(b"x")
    fd = os.open(path, os.O_RDONLY)
    fds = [os.dup(fd) for _ in range(_core.MAX_FDS_PER_MESSAGE + 1)]
    a, b = socket.socketpair()
    try:
        send_msg(a, {"op": "run"}, fds)
        payload, got = recv_frame(b)  # what recv_share reads
        assert pickle.loads(payload) == {"op": "run"} and len(got) == len(fds)
        close_fds(got)
        send_msg(a, "x")
        magic, nfds, length = struct.unpack("<IIQ", b.recv(16))
        assert (magic, nfds, length) == (0x5A52574D, 0, len(pickle.dumps("x", protocol=pickle.HIGHEST_PROTOCOL)))
    finally:
        close_fds(fds + [fd])
        a.close()
        b.close()
