"""The SCM_RIGHTS transport: more fds than one message carries, big descriptors,
many messages in a row, the peer going away; no fd left behind."""

import gc
import os
import select
import socket
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import zerrow_pool as z
from test_share_common import Worker, fd_count, make_table, parse_sipc, pooled_table


def many_segment_table(ncols):
    """A table whose every column lies in a segment of its own (one scope each)."""
    cols = {}
    for i in range(ncols):
        with z.scope():
            cols[f"c{i}"] = pc.add(pa.array(range(64), pa.int64()), i)
    return pa.table(cols)


@pytest.fixture(scope="module")
def wide():
    t = many_segment_table(300)
    with z.share(t, seal=False) as s:
        assert len(s.fds) == 300
    return t


def _check_wide(got, ncols=300):
    assert got.num_columns == ncols
    for i in (0, 1, 252, 253, 254, 299):
        if i < ncols:
            assert got.column(i).to_pylist() == list(range(i, 64 + i))


def test_more_than_253_fds_in_process(wide):
    before = fd_count()
    a, b = z.Channel.pair()
    with a, b:
        # the socket buffer holds the whole message; a thread receives anyway
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("t", b.recv()))
        th.start()
        a.send(wide, seal=False)
        th.join(30)
        assert not th.is_alive()
        _check_wide(out["t"])
        del out
    gc.collect()
    assert fd_count() == before


def test_more_than_253_fds_across_processes_and_back(wide):
    before = fd_count()
    with Worker() as w:
        w.send(wide, seal=False)
        res = w.run("""
        t = recv_obj(sock)
        result = {"cols": t.num_columns, "sum": sum(pc.sum(c).as_py() for c in t.columns),
                  "fds": len(os.listdir("/proc/self/fd"))}
        # reshare: 300 attached segments
        with z.share(t) as s:
            result["segments"] = len(s.fds)
            result["copied"] = s.bytes_copied
            z.send(sock, s)
        """)
        assert res["cols"] == 300 and res["segments"] == 300 and res["copied"] == 0
        assert res["sum"] == sum(sum(range(i, 64 + i)) for i in range(300))
        with w.recv_share() as s:
            assert len(s.fds) == 300
            _check_wide(s.attach())
        w.close()
    gc.collect()
    assert fd_count() == before


def test_exactly_at_the_message_limits():
    for n in (249, 250, 251, 253, 254, 500, 501):
        t = many_segment_table(n)
        a, b = z.Channel.pair()
        with a, b:
            out = {}
            th = threading.Thread(target=lambda: out.setdefault("s", b.recv_share()))
            th.start()
            a.send(t, seal=False)
            th.join(30)
            with out["s"] as s:
                assert len(s.fds) == n
                _check_wide(s.attach(), n)


def test_big_descriptor_larger_than_the_socket_buffer():
    with z.scope():
        t = pa.table({f"c{i}": pa.array([i], pa.int32()) for i in range(3000)})
    a, b = z.Channel.pair()
    with a, b:
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("t", b.recv()))
        th.start()
        with z.share(t) as s:
            sent = a.send(s)
        th.join(60)
        assert len(s.descriptor) > 200_000 and sent == s.counters
        assert out["t"].equals(t)


def test_many_messages_in_a_row():
    tables = [pooled_table(100 + i, seed=i) for i in range(50)]
    for t in tables:
        z.share(t).close()  # each segment's read-only fd is cached by the pool from here on
    before = fd_count()
    a, b = z.Channel.pair()
    with a, b:
        got = []
        th = threading.Thread(target=lambda: got.extend(b.recv() for _ in range(50)))
        th.start()
        for t in tables:
            a.send(t)
        th.join(60)
        assert [g.num_rows for g in got] == [100 + i for i in range(50)]
        assert all(g.equals(t) for g, t in zip(got, tables))
    del got
    gc.collect()
    assert fd_count() == before


def test_recv_share_forwards_without_mapping():
    """A middle process forwards a share without attaching it: no mapping there."""
    t = pooled_table(5000, seed=8)
    with Worker() as middle, Worker() as last:
        # give the middle worker a socket to the last one
        x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with x, y:
            z.send(middle.sock, pa.table({"dummy": pa.array([0])}))
            middle.run("_ = recv_obj(sock)")
            # pass x to the middle worker and y to the last one, over the zerrow sockets' SCM_RIGHTS
            middle.sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, x.fileno().to_bytes(4, "little"))])
            last.sock.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, y.fileno().to_bytes(4, "little"))])
        grab = """
        msg, anc, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(4))
        peer = socket.socket(fileno=int.from_bytes(anc[0][2][:4], "little"))
        """
        middle.run(grab)
        last.run(grab)
        z.send(middle.sock, t)
        res = middle.run("""
        maps0 = sum(1 for l in open("/proc/self/maps") if "memfd:" in l)
        with z.recv_share(sock) as s:
            n = len(s.fds)
            z.send(peer, s)
        maps1 = sum(1 for l in open("/proc/self/maps") if "memfd:" in l)
        result = {"segments": n, "new_maps": maps1 - maps0}
        """)
        assert res["new_maps"] == 0 and res["segments"] >= 1
        out = last.run("""
        t = recv_obj(peer)
        result = [t.num_rows, pc.sum(t.column("c0")).as_py()]
        """)
        assert out == [5000, pc.sum(t.column("c0")).as_py()]


def test_peer_killed_while_we_wait():
    with Worker() as w:
        w.run("import time")
        w.start("time.sleep(0.3); os.kill(os.getpid(), signal.SIGKILL)")
        r, _, _ = select.select([w.sock], [], [], 20)
        assert r, "EOF must wake the receiver"
        with pytest.raises(EOFError):
            z.recv(w.sock)


def test_share_closed_after_send_is_refused():
    t = pooled_table(10)
    a, b = z.Channel.pair()
    with a, b:
        s = z.share(t)
        s.close()
        with pytest.raises(z.ShareError, match="closed"):
            a.send(s)


def test_sending_a_share_keeps_its_fds_open():
    t = pooled_table(10)
    a, b = z.Channel.pair()
    with a, b, z.share(t) as s:
        a.send(s)
        assert not s.closed
        a.send(s)
        assert b.recv().equals(t) and b.recv().equals(t)
        assert parse_sipc(s.descriptor)["num_rows"] == 10


def test_channel_with_multiprocessing_fork():
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    a, b = z.Channel.pair()

    def child(ch):
        t = ch.recv()
        ch.send(t.append_column("twice", pc.multiply(t.column("c0"), 2)))

    with a, b:
        p = ctx.Process(target=child, args=(b,))
        p.start()
        t = pooled_table(1000, seed=3)
        a.send(t)
        r, _, _ = select.select([a], [], [], 30)
        assert r
        got = a.recv()
        p.join(30)
        assert p.exitcode == 0
    assert got.column("twice").to_pylist() == [2 * v for v in t.column("c0").to_pylist()]
    assert make_table(1000, seed=3).equals(got.drop_columns(["twice"]))


def test_send_returns_the_share_counters():
    """send() returns what was sent and how, as one immutable object named as share() names it."""
    import dataclasses

    t = pooled_table(1000)
    a, b = z.Channel.pair()
    with a, b:
        sent = a.send(t, seal=False)
        got = b.recv()
        with z.share(t, seal=False) as s:
            assert s.counters == sent and not hasattr(s, "bytes_shared_zero_copy")  # one name per counter
    assert got.equals(t)
    assert isinstance(sent, z.ShareCounters)
    assert sent.nbytes == sent.bytes_zero_copy > 0 and sent.bytes_copied == 0 and sent.nbuffers > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        sent.nbytes = 0
