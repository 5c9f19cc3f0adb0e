"""The pipeline runtime's one check that the compiled zerrow core is usable.

Kept in one place so that a missing or half-built extension produces one
clear error (naming the import failure) instead of a traceback deep inside a worker.
"""
from __future__ import annotations

import os


class ZerrowUnavailable(RuntimeError):
    """The compiled zerrow pool / sharing layer is not importable."""


def missing() -> list[str]:
    """What keeps the zerrow transport from working: [] or one line naming the import error."""
    try:  # not `import zerrow_pool`: that loads nothing heavy (its names load on first use)
        from zerrow_pool._pyarrow_check import load_core

        load_core()
    except Exception as e:  # a broken build raises anything from ImportError to OSError
        return [f"zerrow_pool ({type(e).__name__}: {e})"]
    return []


def available() -> bool:
    return not missing()


def require():
    """Return the zerrow_pool module or raise ZerrowUnavailable naming what's missing."""
    gone = missing()
    if gone:
        raise ZerrowUnavailable(
            "the zerrow transport needs " + ", ".join(gone)
            + ", which this installation does not provide; rebuild the package "
            "(pip install --no-build-isolation .) or use --transport copy")
    import zerrow_pool

    return zerrow_pool


def preload_library() -> str | None:
    """Path of libzerrow_preload.so if the installation ships it, else None."""
    try:
        import zerrow_pool

        path = zerrow_pool.preload_path()
    except Exception:
        return None
    return path if path and os.path.exists(path) else None
