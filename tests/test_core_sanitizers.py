"""The C++ core's own tests (csrc/tests), built with AddressSanitizer, UBSan and
the arena invariants checked after every transition (ZERROW_DEBUG_INVARIANTS)."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


@pytest.fixture(scope="module")
def pool_test(tmp_path_factory):
    meson = shutil.which("meson") or str(Path(sys.executable).with_name("meson"))
    if not Path(meson).exists():
        pytest.skip("meson is not installed (pip install meson ninja)")
    tmp_path = tmp_path_factory.mktemp("core")
    build = tmp_path / "build"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    setup = subprocess.run(
        [meson, "setup", str(build), str(ROOT), "-Dcore_tests=true", "-Dsanitize_tests=true",
         "-Dbuildtype=debug", f"-Dpython.install_env=auto", f"--native-file={_native_file(tmp_path)}"],
        capture_output=True, text=True, env=env)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    compile_ = subprocess.run(["ninja", "-C", str(build), "pool_test"], capture_output=True, text=True, env=env)
    assert compile_.returncode == 0, compile_.stdout[-5000:]
    return build / "pool_test", env


@pytest.mark.slow
def test_core_under_asan_and_ubsan(pool_test):
    exe, env = pool_test
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=dict(env, **RUN_ENV))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert "pool_test: ok" in run.stdout


BAD_FREES = {
    "not-ours": "the pool does not own this memory",
    "double-small": "not the start of a live allocation",
    "double-large": "not the start of a live allocation",
    "interior": "points inside an allocation",
    "wrong-size": "size differs from the allocation's (102400 bytes)",
    "realloc-freed": "invalid Reallocate",
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(BAD_FREES))
def test_invalid_frees_are_reported_on_request(pool_test, kind):
    exe, env = pool_test
    env = dict(env, **RUN_ENV)

    def run(mode):
        e = dict(env)
        e.pop("ZERROW_DEBUG_MEMORY_POOL", None)
        if mode is not None:
            e["ZERROW_DEBUG_MEMORY_POOL"] = mode
        return subprocess.run([str(exe), "bad-free", kind], capture_output=True, text=True, timeout=120, env=e)

    quiet = run(None)       # default: ignored (never half-done), silently
    assert quiet.returncode == 0 and quiet.stdout.strip() == "survived", quiet.stdout + quiet.stderr
    assert "zerrow: invalid" not in quiet.stderr
    warn = run("warn")      # the same, and said on stderr
    assert warn.returncode == 0 and warn.stdout.strip() == "survived", warn.stdout + warn.stderr
    assert "zerrow: invalid" in warn.stderr and BAD_FREES[kind] in warn.stderr, warn.stderr
    aborted = run("abort")  # said, then abort()
    assert aborted.returncode == -signal.SIGABRT, aborted.stdout + aborted.stderr
    assert BAD_FREES[kind] in aborted.stderr and "survived" not in aborted.stdout


def _native_file(tmp_path):
    # Build against the Python running the tests (and so its pyarrow).
    f = tmp_path / "native.ini"
    f.write_text(f"[binaries]\npython = '{sys.executable}'\npython3 = '{sys.executable}'\n")
    return f
