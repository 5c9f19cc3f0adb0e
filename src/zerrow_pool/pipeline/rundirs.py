"""Private per-user directories for a run's files, and sweeping those of dead runs.

Files a runtime writes (the copy transport's IPC files, spilled
intermediates) live in ``BASE/zerrow-<uid>/run-<pid>-<start>-<random>``:

- ``zerrow-<uid>`` belongs to one user, mode 0700, and is refused if it is a
  symlink, belongs to someone else or is open to others (so another user can
  neither read our data nor make us write through a planted link);
- the run directory names the process that owns it (pid and the process's
  start time, so a recycled pid is not mistaken for the owner).  A process
  killed with SIGKILL cannot clean up; the next runtime started by the same
  user removes every run directory whose owner is gone.

Bases: ``ZERROW_COPY_DIR`` (default ``/dev/shm``: RAM) for the copy
transport, ``ZERROW_SPILL_DIR`` (default the system temp directory: disk) for
spills.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import uuid

COPY_DIR_ENV = "ZERROW_COPY_DIR"
SPILL_DIR_ENV = "ZERROW_SPILL_DIR"


def copy_base() -> str:
    """Where the copy transport writes: ``$ZERROW_COPY_DIR``, else /dev/shm, else temp."""
    env = os.environ.get(COPY_DIR_ENV)
    if env:
        return env
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def spill_base() -> str:
    """Where spilled intermediates go: ``$ZERROW_SPILL_DIR``, else the temp directory."""
    return os.environ.get(SPILL_DIR_ENV) or tempfile.gettempdir()


def user_dir(base: str, prefix: str = "zerrow") -> str:
    """``base/<prefix>-<uid>``: created 0700 if missing, checked to be ours and private."""
    if not os.path.isdir(base):
        raise FileNotFoundError(f"{base} is not a directory (set {COPY_DIR_ENV} or "
                                f"{SPILL_DIR_ENV} to an existing one)")
    return private_dir(os.path.join(base, f"{prefix}-{os.getuid()}"), tighten=True)


def private_dir(path: str, *, tighten: bool) -> str:
    """``path`` created 0700, or checked to be a real directory (never a symlink
    someone planted) of this user that nobody else can enter; returns it.

    An existing directory of ours that others can enter is made private with
    ``tighten``, refused without (where something planted in it could be
    trusted, such as a socket). Raises PermissionError naming the problem."""
    uid = os.getuid()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(f"{path} exists but is not a directory (a symlink?); zerrow keeps "
                              "its files there only in a private directory: remove it")
    if st.st_uid != uid:
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to you (uid {uid}); "
                              "remove it or point zerrow elsewhere")
    if stat.S_IMODE(st.st_mode) & 0o077:
        if not tighten:
            raise PermissionError(f"{path} is open to other users (mode "
                                  f"{stat.filemode(st.st_mode)}): remove it")
        os.chmod(path, 0o700, follow_symlinks=False)
    return path


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return fields[19]  # field 22 of proc(5); the split starts at field 3


def make_run_dir(base: str, prefix: str = "zerrow") -> str:
    """A fresh run directory owned by this process; first removes those of dead runs."""
    parent = user_dir(base, prefix)
    sweep(parent)
    pid = os.getpid()
    path = os.path.join(parent, f"run-{pid}-{_start_time(pid) or 0}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path, 0o700)
    return path


def sweep(parent: str) -> list[str]:
    """Remove run directories in ``parent`` whose owning process is gone; returns them."""
    removed = []
    for name in os.listdir(parent):
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != "run" or not parts[1].isdigit():
            continue
        if _start_time(int(parts[1])) == parts[2]:
            continue  # its owner still runs
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        removed.append(name)
    return removed


def anonymous_file(directory: str) -> int:
    """A new read-write file in ``directory`` that has no name (``O_TMPFILE``):
    no other process can find it by listing or guessing a path; it is reached
    only through the descriptors its holders pass on, and vanishes with the
    last of them. Filesystems without O_TMPFILE get a file unlinked at once."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    fd, path = tempfile.mkstemp(dir=directory)
    os.unlink(path)
    return fd


def reopen_read_only(fd: int) -> int:
    """A read-only descriptor of the file open as ``fd`` (a reader can then
    not write what the producer published)."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
