"""The slice of the zerrow_pool API the pipeline runtime builds on.

Kept in one place so that a missing or half-built extension produces one
clear error instead of AttributeErrors deep inside a worker.
"""
from __future__ import annotations

import os

REQUIRED = ("pool", "scope", "stats", "share", "attach")


class ZerrowUnavailable(RuntimeError):
    """The compiled zerrow pool / sharing layer is not importable."""


def missing() -> list[str]:
    """Names of the required zerrow_pool functions that are not available."""
    try:
        import zerrow_pool
    except Exception as e:  # a broken build raises anything from ImportError to OSError
        return [f"zerrow_pool ({type(e).__name__}: {e})"]
    return [n for n in REQUIRED if not hasattr(zerrow_pool, n)]


def available() -> bool:
    return not missing()


def require():
    """Return the zerrow_pool module or raise ZerrowUnavailable naming what's missing."""
    gone = missing()
    if gone:
        raise ZerrowUnavailable(
            "the zerrow transport needs zerrow_pool." + ", zerrow_pool.".join(gone)
            + " which this installation does not provide; rebuild the package "
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
