"""The pyarrow this build of zerrow is tied to, checked before the extension loads.

The extension links pyarrow's C++ library by its ABI version, libarrow.so.<major*100+minor>,
which changes with every pyarrow release line; with another one installed it could not load.
Every module that needs the extension gets it from :func:`load_core`, so the check runs
whichever of them loads first (``import zerrow_pool`` itself loads nothing heavy).
"""
import importlib
import sys

import pyarrow

from ._build_info import ARROW_SO_VERSION, PYARROW_VERSION, ZERROW_VERSION

REBUILD = "pip install --no-build-isolation <zerrow source>"


def mismatch_message(installed):
    """What to tell a user whose pyarrow (version ``installed``) this build cannot load."""
    line = ".".join(PYARROW_VERSION.split(".")[:2])
    return (f"zerrow {ZERROW_VERSION} needs pyarrow {line}.x (it was built against {PYARROW_VERSION}, "
            f"libarrow.so.{ARROW_SO_VERSION}); you have {installed}: install pyarrow=={line}.* or rebuild "
            f"zerrow against your pyarrow with `{REBUILD}` (see docs/INSTALL.md)")


def check_pyarrow():
    """Raises ImportError naming both versions and the fix when the loaded pyarrow's ABI differs."""
    info = pyarrow.cpp_build_info
    if str(info.so_version) != ARROW_SO_VERSION:
        raise ImportError(mismatch_message(info.version))


def load_core():
    """The compiled core ``zerrow_pool._core``, loaded after :func:`check_pyarrow`.

    Raises ImportError naming both pyarrow versions and the fix when they differ, or when
    the extension cannot find its libarrow (a pyarrow moved or half-installed).
    """
    core = sys.modules.get("zerrow_pool._core")
    if core is not None:
        return core
    check_pyarrow()
    try:  # not `from . import _core`: that asks the package's __getattr__, which calls this
        return importlib.import_module("zerrow_pool._core")
    except ImportError as e:
        if "libarrow" not in str(e):
            raise
        raise ImportError(f"{mismatch_message(pyarrow.__version__)}\n({e})") from e
