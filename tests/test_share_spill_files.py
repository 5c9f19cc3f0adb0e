"""Spill files (segment kind 3): a share's segments copied to disk at the same
offsets, attached from the page cache by consumers that trust their producer.
The pipeline runtime spills shares this way under a memory budget."""

import mmap
import os

import pytest

import zerrow_pool as z
from zerrow_pool._sharing import mark_spilled, segment_kinds
from zerrow_pool.pipeline import rundirs
from zerrow_pool.pipeline.spill import copy_extents
from test_share_common import open_fds, pooled_table


def _spill(fds, directory):
    """Read-only fds of each of ``fds``' files copied into ``directory``."""
    out = []
    for fd in fds:
        new = rundirs.anonymous_file(str(directory))
        try:
            copy_extents(fd, new)
            out.append(rundirs.reopen_read_only(new))
        finally:
            os.close(new)
    return out


@pytest.fixture
def spilled(tmp_path):
    """(the table, the spilled descriptor, the spill files' fds, the share)."""
    t = pooled_table(20_000, seed=5, ncols=3)
    s = z.share(t)
    fds = _spill(s.fds, tmp_path)
    yield t, mark_spilled(s.descriptor), fds, s
    s.close()
    for fd in fds:
        os.close(fd)


def test_a_spilled_share_attaches_from_disk_unchanged(spilled):
    t, desc, fds, s = spilled
    assert segment_kinds(s.descriptor) == [1] * len(s.fds)
    assert segment_kinds(desc) == [3] * len(fds)
    expected = t.to_pydict()
    s.close()  # the memfds are gone: what attaches now comes from disk
    got = z.attach(desc, fds, spill_files=True)
    assert got.to_pydict() == expected
    assert not any(os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:") for fd in fds)


def test_a_spilled_share_can_be_shared_again_as_spill_files(spilled):
    t, desc, fds, _ = spilled
    got = z.attach(desc, fds, spill_files=True)
    with z.share(got.slice(5, 100)) as again:
        assert set(segment_kinds(again.descriptor)) == {3}
        assert again.bytes_copied == 0
        assert again.attach(spill_files=True).equals(t.slice(5, 100))


def test_spill_files_need_the_callers_consent(spilled):
    _, desc, fds, _ = spilled
    with pytest.raises(z.ShareError, match="is a spill file .*trusted producer"):
        z.attach(desc, fds)


def test_spill_files_cannot_be_validated_as_immutable(spilled):
    _, desc, fds, _ = spilled
    with pytest.raises(z.ShareError, match="cannot be sealed against writes"):
        z.attach(desc, fds, spill_files=True, validate_full=True)


def test_a_memfd_is_not_a_spill_file(spilled):
    _, desc, _, s = spilled
    with pytest.raises(z.ShareError, match="is not a spill file on disk"):
        z.attach(desc, s.fds, spill_files=True)


def test_a_writable_spill_file_is_refused(spilled):
    _, desc, fds, _ = spilled
    writable = [os.open(f"/proc/self/fd/{fd}", os.O_RDWR) for fd in fds]
    try:
        before = open_fds()
        with pytest.raises(z.ShareError, match="not open read-only"):
            z.attach(desc, writable, spill_files=True)
        assert open_fds() == before
    finally:
        for fd in writable:
            os.close(fd)


def test_mark_spilled_refuses_a_malformed_descriptor():
    with pytest.raises(z.ShareError, match="SIPC"):
        mark_spilled(b"ZSIP\x01")


def test_copy_extents_keeps_holes_and_bytes(tmp_path):
    """Data at two places of a 64 MiB memfd: the copy has the same bytes at the
    same offsets and the same size, and only the data's blocks on disk."""
    src = os.memfd_create("extents")
    size, page = 64 << 20, mmap.PAGESIZE
    os.ftruncate(src, size)
    os.pwrite(src, b"a" * (3 * page), 0)
    os.pwrite(src, b"b" * 100, 40 << 20)
    dst = rundirs.anonymous_file(str(tmp_path))
    try:
        copied = copy_extents(src, dst)
        assert copied == 4 * page  # the data's pages, not the holes
        st = os.fstat(dst)
        assert st.st_size == size
        assert st.st_blocks * 512 < 1 << 20
        assert os.pread(dst, 3 * page + 1, 0) == b"a" * (3 * page) + b"\0"
        assert os.pread(dst, 101, 40 << 20) == b"b" * 100 + b"\0"
    finally:
        os.close(src)
        os.close(dst)
