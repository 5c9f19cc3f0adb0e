"""Preload coverage: which results land in zerrow memory with and without
libzerrow_preload.so (the operations live in bench/preload_coverage.py, which
also generates the table in docs/PRELOAD_COVERAGE.md)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import zerrow_pool
from conftest import run_python

BENCH = Path(__file__).resolve().parent.parent / "bench" / "preload_coverage.py"

# Paths that allocate from arrow::default_memory_pool() rather than pyarrow's
# default: only the preload library routes them to zerrow.
NEEDS_PRELOAD = {"compute.filter", "group_by", "join", "acero.to_table", "parquet.filtered",
                 "dataset.filtered", "feather.lz4", "to_numpy"}


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("preload_coverage", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {"plain": mod.run(False), "preload": mod.run(True)}


def test_preload_flag(coverage):
    assert coverage["plain"]["preload_active"] is False
    assert coverage["preload"]["preload_active"] is True


def test_with_preload_everything_lands_in_zerrow(coverage):
    for row in coverage["preload"]["rows"]:
        assert row["owned"], row["op"]
        assert row["result_zerrow_bytes"] == row["result_bytes"], row["op"]
        assert row["stock_alloc"] == 0, f"{row['op']} allocated {row['stock_alloc']} bytes outside zerrow"


def test_without_preload_only_pyarrow_default_paths_land(coverage):
    owned = {r["op"] for r in coverage["plain"]["rows"] if r["owned"]}
    every = {r["op"] for r in coverage["plain"]["rows"]}
    assert every - owned == NEEDS_PRELOAD
    for row in coverage["plain"]["rows"]:
        if row["op"] in NEEDS_PRELOAD:
            assert row["stock_alloc"] > 0, row["op"]


def test_preload_makes_zerrow_the_default_outside_scopes():
    code = """
    import pyarrow as pa, zerrow_pool
    print(zerrow_pool.preload_active, pa.default_memory_pool().backend_name)
    t = pa.table({"k": [1, 2, 1], "v": [1.0, 2.0, 3.0]})
    print(zerrow_pool.owns(t.group_by("k").aggregate([("v", "sum")])))
    """
    assert run_python(code, preload=True).split() == ["True", "zerrow", "True"]
    assert run_python(code, preload=False).split() == ["False", "mimalloc", "False"]


def test_preload_before_import_falls_back_to_arrows_pool():
    # Until zerrow_pool is imported, the interposed function returns Arrow's own pool.
    code = """
    import pyarrow as pa
    print(pa.default_memory_pool().backend_name)
    t = pa.table({"k": [1, 2, 1], "v": [1.0, 2.0, 3.0]})
    print(t.group_by("k").aggregate([("v", "sum")]).num_rows)
    """
    assert run_python(code, preload=True).split() == ["mimalloc", "2"]


def test_cli_preload_path_and_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "zerrow_pool", "preload-path"], capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    assert path == zerrow_pool.preload_path() and os.path.exists(path)
    assert zerrow_pool.preload_env({"LD_PRELOAD": "/x.so"})["LD_PRELOAD"] == f"{path}:/x.so"
    assert zerrow_pool.preload_env({"LD_PRELOAD": path})["LD_PRELOAD"] == path
    script = tmp_path / "s.py"
    script.write_text("import sys, zerrow_pool\nprint(zerrow_pool.preload_active, sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-m", "zerrow_pool", "run", str(script), "a", "b"],
                         capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "True ['a', 'b']"
    bad = subprocess.run([sys.executable, "-m", "zerrow_pool"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
