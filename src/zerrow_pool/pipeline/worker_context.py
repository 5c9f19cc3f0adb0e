"""Whether this process is a pipeline worker, so that a script that starts a
runtime at import time fails instead of multiplying.

A worker imports the file that defines a node's function to call it. A
script that creates a ``Runtime`` at module level, outside ``if __name__ ==
"__main__":``, would start a runtime in every worker that imports it, whose
workers import it again: a fork bomb. In a worker, creating a runtime raises
``NestedRuntimeError`` instead, naming the file and the fix.
"""
from __future__ import annotations

import contextlib

_in_worker = False
_importing: str | None = None  # the node module a worker is importing


class NestedRuntimeError(RuntimeError):
    """A runtime was created inside a pipeline worker."""


def enter_worker() -> None:
    """Mark this process (and the sandboxes it forks) as a worker."""
    global _in_worker
    _in_worker = True


@contextlib.contextmanager
def importing(path: str):
    """Around a worker's import of a node's module ``path``."""
    global _importing
    _importing, before = path, _importing
    try:
        yield
    finally:
        _importing = before


def refuse_in_worker() -> None:
    """Raise ``NestedRuntimeError`` in a worker; nothing elsewhere."""
    if not _in_worker:
        return
    where = f" while importing {_importing}" if _importing else ""
    raise NestedRuntimeError(
        f"zerrow: a Runtime was created inside a pipeline worker{where}. A worker imports the "
        "file that defines a node to call it, so the code that runs pipelines must not run on "
        'import: put it under `if __name__ == "__main__":`.')
