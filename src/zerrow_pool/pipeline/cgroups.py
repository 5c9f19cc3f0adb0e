"""Memory cgroups for node invocations: the kernel enforces a node's limit.

Each invocation with a memory limit runs in a cgroup of its own, made below
the cgroup this process runs in (never elsewhere in the hierarchy) as
``<own cgroup>/zerrow-<pid>/<name>``, and removed when the invocation ends.
Both hierarchies are handled: cgroup v1's ``memory`` controller
(``memory.limit_in_bytes``, ``memory.oom_control``) and cgroup v2
(``memory.max``, ``memory.events``).

Who is charged: a page of a memfd is charged to the cgroup of the process
that first faulted it in. A node's zero-copy inputs were faulted in by their
producers, so reading them charges nothing to the node; what the node
allocates (its output included) is charged to it, and stays charged to its
(removed, then offline) cgroup while consumers still map the output.
"""
from __future__ import annotations

import contextlib
import os

PREFIX = "zerrow-"


class CgroupError(OSError):
    """No memory cgroup can be made here (the reason is the message)."""


def _own_memory_cgroup() -> tuple[str, int]:
    """(path of this process's memory cgroup, hierarchy version)."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fstype, _, opts = post.split()[:3]
            mount_point = pre.split()[4]
            if fstype == "cgroup" and "memory" in opts.split(","):
                mounts[1] = mount_point
            elif fstype == "cgroup2":
                mounts.setdefault(2, mount_point)
    with open("/proc/self/cgroup") as f:
        lines = [ln.rstrip("\n").split(":", 2) for ln in f]
    for _, controllers, path in lines:
        if 1 in mounts and "memory" in controllers.split(","):
            return os.path.join(mounts[1], path.lstrip("/")), 1
    for hid, controllers, path in lines:
        if hid == "0" and 2 in mounts:
            base = os.path.join(mounts[2], path.lstrip("/"))
            try:
                with open(os.path.join(base, "cgroup.controllers")) as f:
                    if "memory" in f.read().split():
                        return base, 2
            except OSError:
                pass
    raise CgroupError(0, "no memory cgroup controller is mounted for this process")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_tree(path: str) -> None:
    """rmdir a cgroup and its (empty) children, deepest first."""
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, d))
    with contextlib.suppress(OSError):
        os.rmdir(path)


class MemoryCgroups:
    """This process's group of invocation cgroups.

    Raises CgroupError (with the reason) when none can be made: no memory
    controller, or no permission to make a cgroup below our own.
    """

    def __init__(self):
        try:
            own, self.version = _own_memory_cgroup()
        except OSError as e:
            raise CgroupError(e.errno or 0, f"cannot find this process's memory cgroup: {e}") from None
        self._sweep(own)
        self.base = os.path.join(own, f"{PREFIX}{os.getpid()}")
        try:
            os.mkdir(self.base)
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError(e.errno, f"cannot make a cgroup below {own}: {e.strerror}") from None
        if self.version == 2:
            try:  # children get the memory controller
                with open(os.path.join(self.base, "cgroup.subtree_control"), "w") as f:
                    f.write("+memory")
            except OSError as e:
                self.close()
                raise CgroupError(e.errno, f"cannot enable the memory controller below {own}: "
                                           f"{e.strerror}") from None

    @staticmethod
    def _sweep(own: str) -> None:
        """Remove what processes that died without cleaning up left below ``own``."""
        try:
            names = os.listdir(own)
        except OSError:
            return
        for name in names:
            if name.startswith(PREFIX) and name[len(PREFIX):].isdigit():
                pid = int(name[len(PREFIX):])
                if pid != os.getpid() and not _pid_alive(pid):
                    _remove_tree(os.path.join(own, name))

    def create(self, name: str, limit: int) -> "Cgroup":
        path = os.path.join(self.base, name)
        os.mkdir(path)
        cg = Cgroup(path, self.version)
        try:
            cg.write("memory.limit_in_bytes" if self.version == 1 else "memory.max", str(limit))
            if self.version == 1:  # swap must not stretch the limit
                with contextlib.suppress(OSError):
                    cg.write("memory.memsw.limit_in_bytes", str(limit))
        except OSError:
            cg.remove()
            raise
        return cg

    def close(self) -> None:
        _remove_tree(self.base)


class Cgroup:
    """One invocation's memory cgroup."""

    def __init__(self, path: str, version: int):
        self.path, self.version = path, version

    def write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def _read(self, name: str) -> str:
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def join(self) -> None:
        """Move the calling process into this cgroup."""
        self.write("cgroup.procs", str(os.getpid()))

    def oom_killed(self) -> bool:
        """Did the kernel kill a process here for going over the limit?"""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            for line in self._read(name).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def peak(self) -> int:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(self._read(name))
        except (OSError, ValueError):
            return 0

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
