"""Decode cache: hits across nodes, runs and concurrent DAGs; keyed by file identity."""
import os
import time

import pyarrow.compute as pc
import pytest

from zerrow_pool import pipeline as zp
from zerrow_pool.pipeline.testing import make_parquet, require_zerrow


@zp.node
def left(src):
    return src.select(["key"])


@zp.node
def right(src):
    return src.filter(pc.field("grp") < 4)


@zp.node
def other_view(src2):
    return src2.select(["key"])


@pytest.fixture
def data(tmp_path):
    return make_parquet(tmp_path / "d.parquet", rows=40_000, row_group_size=10_000)


def _pipe(data, name="c", columns=("key", "grp", "value"), flt=None):
    return zp.Pipeline(name, [zp.parquet("src", data, columns=list(columns), filter=flt), left, right])


def test_hits_across_runs_and_concurrent_dags(data):
    require_zerrow()
    with zp.Runtime(workers=2, transport="zerrow") as rt:
        first = rt.run(_pipe(data)).report
        assert first.cache_misses == 4 * 3 and first.cache_hits == 0  # 4 row groups x 3 columns
        second = rt.run(_pipe(data)).report
        assert second.cache_hits == 12 and second.cache_misses == 0
        # four concurrent DAGs over one new projection: every chunk is decoded once
        before = rt.cache.decoded_bytes
        runs = rt.run_many([_pipe(data, f"dag{i}", columns=("key", "grp", "amount"))
                            for i in range(4)])
        hits = sum(r.report.cache_hits for r in runs)
        misses = sum(r.report.cache_misses for r in runs)
        assert hits == 4 * 8 and misses == 4 * 4  # key, grp cached; amount decoded once
        assert rt.cache.decoded_bytes - before == pytest.approx(40_000 * 8, rel=0.03)
        for r in runs:
            assert r["left"].equals(runs[0]["left"])


def test_key_includes_filter_and_file_identity(data):
    require_zerrow()
    with zp.Runtime(workers=2, transport="zerrow") as rt:
        rt.run(_pipe(data))
        filtered = rt.run(_pipe(data, flt=pc.field("grp") == 1)).report
        assert filtered.cache_hits == 0  # different pushed-down filter
        time.sleep(0.01)
        make_parquet(data, rows=40_000, row_group_size=10_000, seed=1)  # rewrite: new mtime
        os.utime(data)
        again = rt.run(_pipe(data)).report
        assert again.cache_hits == 0


def test_eviction_under_budget(data, tmp_path):
    """Decodes nobody reads are evicted, before anything is spilled, when a run needs room."""
    require_zerrow()
    other = make_parquet(tmp_path / "e.parquet", rows=40_000, row_group_size=10_000, seed=1)
    a = _pipe(data, "a", columns=("key", "grp"))
    b = _pipe(other, "b", columns=("key", "grp", "value", "amount"))  # no entry of a's
    with zp.Runtime(workers=1, transport="zerrow") as rt:
        rt.run(a, outputs=())
        a_cached = rt.resources.usage()
    # Room for a's run and its cached decodes, not for those and b's run beside them.
    budget = int(3.5 * a_cached)
    with zp.Runtime(workers=1, transport="zerrow", memory_budget=budget) as rt:
        ra = rt.run(a)
        assert ra.report.spills == 0 and rt.resources.usage() == a_cached
        rb = rt.run(b)
        assert rt.cache.evictions == ra.report.cache_misses  # all of a's, and only those
        assert rt.resources.usage() <= budget
        assert rt.resources.peak <= budget * 1.10, (rt.resources.peak, budget)
        again = rt.run(a)  # evicted chunks are decoded again, results unchanged
        assert again.report.cache_misses == ra.report.cache_misses
        assert again["left"].equals(ra["left"]) and rb["right"].num_rows > 0


def test_a_decoded_input_the_budget_cannot_hold_stays_cached_on_disk(data):
    """A source spilled under the budget moves its decodes to disk, where later runs find them."""
    require_zerrow()
    a = _pipe(data, "a", columns=("key", "grp", "value"))
    b = _pipe(data, "b", columns=("key", "grp", "amount", "label"))
    with zp.Runtime(workers=1, transport="zerrow") as rt:
        ra = rt.run(a, outputs=())
        alone = rt.resources.usage()
        rb = rt.run(b, outputs=())
        both_cached = rt.resources.usage()
    budget = (alone + both_cached) // 2  # a's decodes fit, not with b's run beside them
    with zp.Runtime(workers=1, transport="zerrow", memory_budget=budget) as rt:
        first = rt.run(a)
        assert first.report.spills >= 1 and first.report.cache_misses == 12
        on_disk = [e for e in rt.cache.entries.values() if e.payload.spilled]
        assert len(on_disk) == 12 and rt.resources.usage() == 0  # cached, holding no memory
        assert rt.cache.disk_bytes == rt.cache.nbytes > 0
        second = rt.run(b)  # key and grp come from disk; amount and label are decoded
        assert second.report.cache_hits == 8 and second.report.cache_misses == 8
        decoded = rt.cache.decoded_bytes
        again = rt.run(a)
        assert again.report.cache_hits == 12 and again.report.cache_misses == 0
        assert rt.cache.decoded_bytes == decoded  # nothing decoded again
        assert again["left"].equals(first["left"]) and again["right"].equals(first["right"])
        assert rt.resources.peak <= budget * 1.10, (rt.resources.peak, budget)
        assert rt.cache.evictions == 0
    assert rb.report.status == ra.report.status == "done"


@zp.node
def both_views(src, src2):
    return src.append_column("key2", src2["key"])


def test_two_sources_in_one_dag_decode_once(data):
    require_zerrow()
    a = zp.parquet("src", data, columns=["key", "value"])
    b = zp.parquet("src2", data, columns=["key"])
    with zp.Runtime(workers=2, transport="zerrow") as rt:
        r = rt.run(zp.Pipeline("two", [a, b, both_views]))
        assert rt.cache.decoded_bytes == pytest.approx(40_000 * 16, rel=0.03)  # key once
        assert r["both_views"]["key2"].equals(r["both_views"]["key"])
        assert r.report.node("both_views").bytes_copied == 0


def test_cache_bound_evicts_idle_entries_between_runs(data, tmp_path):
    """A long-lived runtime keeps at most cache_bytes of decodes once its runs finish."""
    require_zerrow()
    other = make_parquet(tmp_path / "e.parquet", rows=40_000, row_group_size=10_000)
    with zp.Runtime(workers=2, transport="zerrow", cache_bytes="200K") as rt:
        one = _pipe(data)
        rt.run(one)
        assert 0 < rt.cache.nbytes <= 200 * 1024
        evicted = rt.cache.evictions
        rt.run(_pipe(other, "other"))
        assert rt.cache.nbytes <= 200 * 1024
        assert rt.cache.evictions > evicted  # the second input did not simply pile up
        # what is still cached serves hits; the rest is decoded again, correctly
        again = rt.run(one, outputs=["left"])
        assert again.report.cache_misses > 0 and again["left"].num_rows == 40_000
    with zp.Runtime(workers=1, transport="zerrow") as rt:  # default: no eviction for small runs
        rt.run(_pipe(data))
        assert len(rt.cache.entries) == 12


def test_peak_pinned_leaves_out_decodes_kept_for_later_runs(data, tmp_path):
    """peak_held counts idle cached decodes; peak_pinned only what the run itself holds."""
    require_zerrow()
    other = make_parquet(tmp_path / "e.parquet", rows=40_000, row_group_size=10_000)
    with zp.Runtime(workers=2, transport="zerrow") as rt:
        first = rt.run(_pipe(data)).report
        assert 0 < first.peak_pinned <= first.peak_held
        idle = rt.resources.usage() - rt.resources.usage(pinned_only=True)
        assert idle >= rt.cache.nbytes > 0  # after the run, only cached decodes are held
        second = rt.run(_pipe(other, "other")).report
        # the first input's decodes stayed cached, idle, through the whole second run
        assert second.peak_held - second.peak_pinned >= idle
