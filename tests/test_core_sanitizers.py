"""The C++ core's own tests (csrc/tests), built with AddressSanitizer and UBSan."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_core_under_asan_and_ubsan(tmp_path):
    meson = shutil.which("meson") or str(Path(sys.executable).with_name("meson"))
    if not Path(meson).exists():
        pytest.skip("meson is not installed (pip install meson ninja)")
    build = tmp_path / "build"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    setup = subprocess.run(
        [meson, "setup", str(build), str(ROOT), "-Dcore_tests=true", "-Dsanitize_tests=true",
         "-Dbuildtype=debug", f"-Dpython.install_env=auto", f"--native-file={_native_file(tmp_path)}"],
        capture_output=True, text=True, env=env)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    compile_ = subprocess.run(["ninja", "-C", str(build), "pool_test"], capture_output=True, text=True, env=env)
    assert compile_.returncode == 0, compile_.stdout[-5000:]
    run = subprocess.run([str(build / "pool_test")], capture_output=True, text=True, timeout=600,
                         env=dict(env, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
                                  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "pool_test: ok" in run.stdout


def _native_file(tmp_path):
    # Build against the Python running the tests (and so its pyarrow).
    f = tmp_path / "native.ini"
    f.write_text(f"[binaries]\npython = '{sys.executable}'\npython3 = '{sys.executable}'\n")
    return f
