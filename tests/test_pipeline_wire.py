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
