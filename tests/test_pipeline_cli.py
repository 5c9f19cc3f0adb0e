"""The `zerrow` command: run a pipeline file, demo on a tiny dataset."""
import json
import os
import subprocess
import sys

import pytest

from zerrow_pool import demo_data


def _zerrow(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "zerrow_pool.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("demo") / "trips-tiny")
    demo_data.generate(60_000, d, rows_per_file=20_000, row_group_rows=10_000)
    return d


def test_generate_is_deterministic(tmp_path, tiny):
    d2 = demo_data.generate(60_000, str(tmp_path / "again"), rows_per_file=20_000,
                            row_group_rows=10_000)
    import pyarrow.parquet as pq
    a = pq.read_table(os.path.join(tiny, "trips"))
    b = pq.read_table(os.path.join(d2, "trips"))
    assert a.num_rows == 60_000 and a.equals(b)
    assert pq.read_table(os.path.join(tiny, "zones.parquet")).num_rows == demo_data.N_ZONES


def test_run_copy_transport_report(tiny, tmp_path):
    out = tmp_path / "rep.json"
    r = _zerrow("run", "examples/taxi_zones.py", "--transport", "copy", "--workers", "2",
                "--json", str(out), env={"ZERROW_DEMO_DIR": tiny},)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "with_borough" in r.stdout and "zero-copy rate" in r.stdout
    assert "> clean started" in r.stderr  # live progress
    rep = json.loads(out.read_text())
    assert rep["status"] == "done" and rep["transport"] == "copy"
    assert {n["name"] for n in rep["nodes"]} >= {"trips", "zones", "clean", "borough_stats"}


def test_run_reports_failure_and_bad_args(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from zerrow_pool import pipeline as zp\n\n@zp.node\ndef lonely(missing):\n"
                   "    return missing\n")
    r = _zerrow("run", str(bad), "--transport", "copy")
    assert r.returncode == 2 and "names no node" in r.stderr
    r = _zerrow("run", str(bad), "--memory-budget", "lots", "--transport", "copy")
    assert r.returncode == 2


def test_demo_tiny(tiny, tmp_path):
    root = tmp_path / "root"
    os.makedirs(root)
    os.symlink(tiny, root / "trips-60000")
    r = _zerrow("demo", "--rows", "60000", "--pipeline", "zones", "-q",
                env={"ZERROW_DATA": str(root)})
    assert r.returncode == 0, r.stderr + r.stdout
    assert "comparison" in r.stdout and "copy (warm)" in r.stdout
    from zerrow_pool.pipeline import zerrow_api
    if zerrow_api.available():
        assert "zerrow (warm cache)" in r.stdout and "shared zero-copy" in r.stdout


def test_run_no_cache_flag(tiny):
    from zerrow_pool.pipeline.testing import require_zerrow
    require_zerrow()
    r = _zerrow("run", "examples/taxi_zones.py", "--no-cache",
                "-q", "--workers", "1", env={"ZERROW_DEMO_DIR": tiny})
    assert r.returncode == 0, r.stderr + r.stdout
    assert "cache=off" in r.stdout and "decode cache:" not in r.stdout


def test_run_zerrow_transport(tiny):
    from zerrow_pool.pipeline.testing import require_zerrow
    require_zerrow()
    r = _zerrow("run", "examples/taxi_movement.py", "--workers", "2", "--memory-budget", "1G",
                env={"ZERROW_DEMO_DIR": tiny})
    assert r.returncode == 0, r.stderr + r.stdout
    assert "zero-copy rate 100.00%" in r.stdout
    assert "transport=zerrow" in r.stdout
