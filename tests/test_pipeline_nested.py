"""A script that runs a pipeline at import time, without a main guard: each
worker imports it to find the node, and must refuse to start a runtime of
its own instead of multiplying (it once grew into a fork bomb)."""
import os
import signal
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import pyarrow as pa
    from zerrow_pool import pipeline as zp

    @zp.node
    def one():
        return pa.table({"x": [1]})

    with zp.Runtime(workers=1, transport="copy") as rt:
        result = rt.run(zp.Pipeline("unguarded", [one]), raise_on_error=False)
        print("STATUS", result.report.node("one").status)
        print("ERROR", result.report.node("one").error)
""")


def test_a_runtime_started_on_import_fails_in_the_worker(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        try:  # a regression multiplies processes: take the whole group down
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err
    assert "STATUS failed" in out, out + err
    assert "NestedRuntimeError" in out and 'if __name__ == "__main__":' in out, out
    assert str(script) in out, out
