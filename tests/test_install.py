"""Installation: a build of zerrow is tied to one pyarrow release line, and says so when its
compiled core first loads (``import zerrow_pool`` alone loads nothing heavy)."""

import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from zerrow_pool import _build_info


def import_zerrow_after(setup, first_use="zerrow_pool.pool()"):
    """Runs ``setup``, ``import zerrow_pool`` and ``first_use`` of the core in a fresh
    interpreter; returns (exit code, stderr)."""
    code = textwrap.dedent(setup) + f"\nimport zerrow_pool\n{first_use}\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr


def built_line():
    return ".".join(_build_info.PYARROW_VERSION.split(".")[:2])


def test_build_records_the_pyarrow_it_was_built_against():
    assert _build_info.PYARROW_VERSION == pa.__version__
    assert _build_info.ARROW_SO_VERSION == pa.cpp_build_info.so_version


@pytest.mark.parametrize("first_use", ["zerrow_pool.pool()", "from zerrow_pool import share",
                                       "import zerrow_pool.pipeline.wire"])
def test_another_pyarrow_release_line_is_refused_with_both_versions_and_the_fix(first_use):
    rc, err = import_zerrow_after("""
        import pyarrow
        info = pyarrow.cpp_build_info   # what a pyarrow 19.0.1 install reports
        pyarrow.cpp_build_info = info._replace(version="19.0.1", so_version="1900")
    """, first_use)
    assert rc != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("ImportError: zerrow ")
    assert f"needs pyarrow {built_line()}.x" in last
    assert f"built against {_build_info.PYARROW_VERSION}" in last
    assert "you have 19.0.1" in last
    assert f"pyarrow=={built_line()}.*" in last
    assert "--no-build-isolation" in last


def core_import_fails_with(message):
    """Setup code that makes loading zerrow_pool._core raise ImportError(message)."""
    return f"""
        import importlib.abc, sys
        class FailingCore(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "zerrow_pool._core":
                    raise ImportError({message!r})
        sys.meta_path.insert(0, FailingCore())
    """


def test_a_libarrow_load_failure_is_reported_with_the_fix():
    # The loader's own words when libarrow.so.<N> is missing.
    rc, err = import_zerrow_after(core_import_fails_with(
        "libarrow.so.1900: cannot open shared object file: No such file or directory"))
    assert rc != 0
    assert f"ImportError: zerrow {_build_info.ZERROW_VERSION} needs pyarrow {built_line()}.x" in err
    assert "(libarrow.so.1900: cannot open shared object file" in err


def test_the_pipelines_check_names_a_core_that_cannot_load():
    rc, err = import_zerrow_after(core_import_fails_with("something else entirely"), """
from zerrow_pool.pipeline import zerrow_api
gone = zerrow_api.missing()
assert gone == ["zerrow_pool (ImportError: something else entirely)"], gone
assert not zerrow_api.available()
""")
    assert rc == 0, err


def test_other_import_errors_pass_through_unchanged():
    rc, err = import_zerrow_after(core_import_fails_with("something else entirely"))
    assert rc != 0
    assert err.strip().splitlines()[-1] == "ImportError: something else entirely"
