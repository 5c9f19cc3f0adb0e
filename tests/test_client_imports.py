"""The `zerrow run` client and `zerrow service` start without pyarrow, numpy or the compiled core.

Every ``zerrow run`` is a short-lived process that hands the run to the service;
pyarrow and numpy cost it ~0.2 s of imports that it does not need. Each command
here runs the real CLI in a fresh interpreter that reports, at exit, which
heavy modules it had loaded.
"""
import json
import os
import subprocess
import sys
import textwrap

from test_service import pipeline_file, svc_dir  # noqa: F401 - the fixtures

HEAVY = ("pyarrow", "numpy", "zerrow_pool._core")

# The CLI's main(), with a record of the heavy modules loaded written at exit.
CLIENT = textwrap.dedent("""
    import atexit, json, sys
    out = sys.argv.pop(1)

    def record():
        heavy = sorted(m for m in sys.modules if m in {heavy!r} or m.split(".")[0] in {heavy!r})
        with open(out, "w") as f:
            json.dump(heavy, f)

    atexit.register(record)
    from zerrow_pool.cli import main
    sys.exit(main(sys.argv[1:]))
""").format(heavy=HEAVY)


def client(*args, svc_dir, tmp_path, env=None):
    """Runs ``zerrow ARGS``; returns (completed process, heavy modules it loaded)."""
    record = tmp_path / f"heavy-{len(list(tmp_path.iterdir()))}.json"
    full = {**os.environ, "ZERROW_SERVICE_DIR": svc_dir, **(env or {})}
    r = subprocess.run([sys.executable, "-c", CLIENT, str(record), *args], capture_output=True,
                       text=True, env=full, timeout=180, cwd=tmp_path)
    return r, json.loads(record.read_text())


def test_run_through_the_service_loads_no_pyarrow(pipeline_file, svc_dir, tmp_path):  # noqa: F811
    pipeline, data = pipeline_file
    env = {"SALES": data}
    first, heavy = client("run", pipeline, "--workers", "2", svc_dir=svc_dir, tmp_path=tmp_path,
                          env=env)
    assert first.returncode == 0, first.stderr + first.stdout
    assert heavy == []  # the client that started the service
    report = tmp_path / "report.json"
    warm, heavy = client("run", pipeline, "--workers", "2", "--json", str(report),
                         svc_dir=svc_dir, tmp_path=tmp_path, env=env)
    assert warm.returncode == 0, warm.stderr + warm.stdout
    assert heavy == []
    assert "per_store done" in warm.stderr  # progress events printed
    assert "per_store" in warm.stdout  # the report
    assert json.loads(report.read_text())["status"] == "done"


def test_a_refused_run_loads_no_pyarrow(svc_dir, tmp_path):  # noqa: F811
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('broken at import')\n")
    r, heavy = client("run", str(bad), svc_dir=svc_dir, tmp_path=tmp_path)
    assert r.returncode == 2
    assert "broken at import" in r.stderr
    assert heavy == []


def test_service_status_and_stop_load_no_pyarrow(pipeline_file, svc_dir, tmp_path):  # noqa: F811
    pipeline, data = pipeline_file
    r, heavy = client("service", "status", svc_dir=svc_dir, tmp_path=tmp_path)
    assert r.returncode == 3 and heavy == []  # none running
    r, _ = client("run", pipeline, "-q", svc_dir=svc_dir, tmp_path=tmp_path, env={"SALES": data})
    assert r.returncode == 0, r.stderr
    for args in (["status"], ["status", "--json"]):
        r, heavy = client("service", *args, svc_dir=svc_dir, tmp_path=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "runtime" in r.stdout and heavy == []
    r, heavy = client("service", "stop", svc_dir=svc_dir, tmp_path=tmp_path)
    assert r.returncode == 0 and "stopped the zerrow service" in r.stdout
    assert heavy == []


def test_show_loads_pyarrow_when_it_needs_the_tables(pipeline_file, svc_dir, tmp_path):  # noqa: F811
    # The other side of the record above: a client that receives tables does load pyarrow.
    pipeline, data = pipeline_file
    r, heavy = client("run", pipeline, "-q", "--show", "per_store", svc_dir=svc_dir,
                      tmp_path=tmp_path, env={"SALES": data})
    assert r.returncode == 0, r.stderr
    assert "per_store: 20 rows" in r.stdout
    assert "pyarrow" in heavy and "zerrow_pool._core" in heavy
