"""The kernel answers the pool's "does anyone else hold this segment?" the way it
relies on (a write lease is refused while any other open file description or
mapping of the memfd exists), on each kernel the VM boots.

tests/test_pool_reclaim.py covers the behaviour across processes on the host;
this is the in-process core of it, cheap enough to run under TCG.
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import zerrow_pool as zp

N = 1_000_000
SOURCE = pa.array(np.arange(N, dtype=np.int64))


def _made(seed):
    with zp.scope():
        return pa.table({"x": pc.add(SOURCE, seed)})


def _reclaimed():
    _made(0)  # needs a new segment: the pool asks about its lent ones
    return zp.stats()["segments_reclaimed"]


def test_lent_segment_comes_back_only_when_no_fd_or_mapping_remains():
    start = zp.stats()["segments_reclaimed"]
    t = _made(1)
    share = zp.share(t, seal=False)
    view = zp.attach(share.descriptor, share.fds)  # maps the read-only fds
    del t
    assert zp.stats()["lent_segments"] >= 1
    assert _reclaimed() == start                    # fds open and mapped
    share.close()
    assert _reclaimed() == start                    # still mapped by the view
    assert pc.all(pc.equal(view["x"], pc.add(SOURCE, 1))).as_py()
    del view
    assert _reclaimed() >= start + 1                # nobody else holds it
