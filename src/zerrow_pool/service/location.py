"""Where the service's socket lives: a directory only its user can enter.

``$ZERROW_SERVICE_DIR`` if set, else ``$XDG_RUNTIME_DIR/zerrow`` when that is
ours, else ``/tmp/zerrow-<uid>``. The directory is created 0700 and, if it
already exists, accepted only when it is a real directory (not a symlink)
owned by this user with no access for anyone else: the socket and its lock are
then unreachable to other users, and a planted directory cannot capture a run.
"""
from __future__ import annotations

import os
import stat

from ..pipeline.rundirs import private_dir


class ServiceDirError(RuntimeError):
    """The service directory exists but is not private to this user."""


def service_dir() -> str:
    explicit = os.environ.get("ZERROW_SERVICE_DIR")
    if explicit:
        return os.path.abspath(explicit)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _owned_private(runtime):
        return os.path.join(runtime, "zerrow")
    return os.path.join("/tmp", f"zerrow-{os.getuid()}")


def _owned_private(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def ensure_private_dir(path: str) -> str:
    """Create ``path`` (mode 0700) or check that the existing one is private; returns it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        return private_dir(path, tighten=False)
    except PermissionError as e:
        raise ServiceDirError(f"{e}, set ZERROW_SERVICE_DIR to another directory, or run with "
                              "--no-service") from None


def socket_path(directory: str) -> str:
    return os.path.join(directory, "service.sock")


def lock_path(directory: str) -> str:
    return os.path.join(directory, "service.lock")


def log_path(directory: str) -> str:
    return os.path.join(directory, "service.log")
