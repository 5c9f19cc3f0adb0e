"""pytest-benchmark of handing a table to another process (see handoff_methods.py).

    pytest bench/bench_share.py                        # 1 MiB and 64 MiB, every method
    ZERROW_BENCH_SHARE_SIZES=1M,64M,1G pytest bench/bench_share.py
    python bench/handoff_run.py                         # the tables of bench/RESULTS.md

Each round is one handoff (producer -> persistent receiver, which sums one
column) and its acknowledgement. test_ratios, last, prints every baseline's
median divided by zerrow's at the same size and checks the targets that apply
(at 1 GiB: >= 10x the /dev/shm IPC file, >= 5x Ray; the bare handoff of a
10-column table <= 100 us median at every size).
"""

import os
import statistics
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import zerrow_pool as z  # noqa: E402
from handoff_methods import METHODS, Method, make_table  # noqa: E402

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
SIZES = [int(s[:-1]) * UNITS[s[-1]] for s in os.environ.get("ZERROW_BENCH_SHARE_SIZES", "1M,64M").split(",")]
ROUNDS = {1 << 20: 40, 64 << 20: 8, 1 << 30: 3}
MEDIANS = {}

_tables = {}


def table_of(size, ncols=None):
    key = (size, ncols)
    if key not in _tables:
        with z.scope():
            _tables[key] = make_table(size, ncols)
    return _tables[key]


def _label(size):
    return f"{size >> 20}MiB" if size < (1 << 30) else f"{size >> 30}GiB"


@pytest.fixture(scope="module", params=METHODS)
def method(request):
    try:
        m = Method(request.param)
    except Exception as e:  # Ray may be unable to start
        pytest.skip(f"{request.param} unavailable: {e}")
    yield m
    m.close()


@pytest.mark.parametrize("size", SIZES, ids=_label)
def test_handoff(benchmark, method, size):
    table = table_of(size)
    benchmark.group = f"handoff {_label(size)}"
    method.handoff(table)  # warm-up
    benchmark.pedantic(method.handoff, args=(table,), rounds=ROUNDS.get(size, 5), iterations=1)
    MEDIANS[(method.name, size)] = benchmark.stats.stats.median
    if method.name == "zerrow":
        assert method.last["bytes_copied"] == 0


@pytest.fixture(scope="module")
def bare():
    m = Method("zerrow", touch=False)
    yield m
    m.close()


@pytest.mark.parametrize("size", sorted(set(SIZES + [8 << 20])), ids=_label)
def test_bare_handoff(benchmark, bare, size):
    table = table_of(size, ncols=10)
    benchmark.group = "bare handoff, 10 columns"
    bare.handoff(table)
    benchmark.pedantic(bare.handoff, args=(table,), rounds=300, iterations=1, warmup_rounds=20)
    MEDIANS[("bare", size)] = benchmark.stats.stats.median


def test_ratios():
    if not MEDIANS:
        pytest.skip("run with the benchmarks")
    lines = []
    for size in SIZES:
        zr = MEDIANS.get(("zerrow", size))
        if not zr:
            continue
        for m in METHODS[1:]:
            if (m, size) in MEDIANS:
                lines.append(f"{_label(size):>6} {m:>13}: {MEDIANS[(m, size)] / zr:7.1f}x zerrow's time")
    print("\n" + "\n".join(lines))
    bare = [v for (k, _), v in MEDIANS.items() if k == "bare"]
    if bare:
        print(f"bare handoff medians: {[f'{v * 1e6:.0f} us' for v in bare]}")
        assert statistics.median(bare) <= 100e-6
    g = 1 << 30
    if ("zerrow", g) in MEDIANS:
        if ("ipc_shm_file", g) in MEDIANS:
            assert MEDIANS[("ipc_shm_file", g)] / MEDIANS[("zerrow", g)] >= 10
        if ("ray", g) in MEDIANS:
            assert MEDIANS[("ray", g)] / MEDIANS[("zerrow", g)] >= 5
