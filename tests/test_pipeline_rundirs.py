"""Private per-user run directories: refused when unsafe, swept when their owner is gone."""
import os
import stat
import subprocess
import sys

import pytest

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline import rundirs


def test_run_dir_is_private_and_named_by_owner(tmp_path):
    d = rundirs.make_run_dir(str(tmp_path))
    parent = os.path.dirname(d)
    assert parent == str(tmp_path / f"zerrow-{os.getuid()}")
    assert stat.S_IMODE(os.stat(parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert os.path.basename(d).startswith(f"run-{os.getpid()}-")


def test_planted_symlink_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    os.symlink(target, tmp_path / f"zerrow-{os.getuid()}")
    with pytest.raises(PermissionError, match="not a directory"):
        rundirs.make_run_dir(str(tmp_path))
    assert os.listdir(target) == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory another user owns")
def test_directory_of_another_user_is_refused(tmp_path):
    d = tmp_path / f"zerrow-{os.getuid()}"
    d.mkdir(mode=0o700)
    os.chown(d, 12345, 12345)
    with pytest.raises(PermissionError, match="belongs to uid 12345"):
        rundirs.make_run_dir(str(tmp_path))


def test_open_permissions_are_tightened(tmp_path):
    d = tmp_path / f"zerrow-{os.getuid()}"
    d.mkdir()
    os.chmod(d, 0o777)
    rundirs.make_run_dir(str(tmp_path))
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


def test_sweep_removes_only_dead_owners(tmp_path):
    parent = rundirs.user_dir(str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    mine = rundirs.make_run_dir(str(tmp_path))
    gone = os.path.join(parent, f"run-{dead}-123-abcdef01")
    recycled = os.path.join(parent, f"run-{os.getpid()}-1-abcdef02")  # our pid, another start
    other = os.path.join(parent, "unrelated")
    for p in (gone, recycled, other):
        os.mkdir(p)
    removed = rundirs.sweep(parent)
    assert sorted(removed) == sorted([os.path.basename(gone), os.path.basename(recycled)])
    assert os.path.isdir(mine) and os.path.isdir(other)


def test_runtime_uses_copy_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ZERROW_COPY_DIR", str(tmp_path))
    with zp.Runtime(workers=1, transport="copy") as rt:
        assert rt.out_dir.startswith(str(tmp_path / f"zerrow-{os.getuid()}") + os.sep)
        out_dir = rt.out_dir
    assert not os.path.exists(out_dir)


def test_spills_go_to_a_private_dir(tmp_path):
    from zerrow_pool.pipeline.spill import Spiller
    s = Spiller(str(tmp_path))
    assert s.dir is None  # nothing made until something spills
    s.dir = rundirs.make_run_dir(s.base, "zerrow-spill")
    assert os.path.dirname(s.dir) == str(tmp_path / f"zerrow-spill-{os.getuid()}")
    s.cleanup()
    assert not os.path.exists(s.dir)
