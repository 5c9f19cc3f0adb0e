"""Process barriers around node invocations (docs/SANDBOX.md has the threat model).

Every runtime process (the coordinator, each worker's zygote, each invocation)
is *non-dumpable*: another process of the same user can then neither open
its descriptors through ``/proc/PID/fd``, nor read ``/proc/PID/mem``, nor
ptrace it or ``process_vm_readv`` it, unless it holds ``CAP_SYS_PTRACE``.

An invocation (one node, decode or read, forked from a zygote) additionally
sets ``NO_NEW_PRIVS`` and, when the runtime runs as root, gives up every
capability (effective, permitted, inheritable, ambient and bounding sets,
with the securebits that stop uid 0 from regaining them on ``execve``), so
that root's ``CAP_SYS_PTRACE`` and ``CAP_DAC_*`` no longer open the doors
above. It keeps uid 0, and so its access to the files the user's own code
reads (a distinct uid would lose the interpreter and data under ``/root``).
"""
from __future__ import annotations

import ctypes
import enum
import os
import signal
import threading

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# securebits: uid 0 gains no capabilities on execve or setuid, and the bits stay set.
_SECBITS_LOCKED_NOROOT = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80
_CAP_SETPCAP = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class Isolation(enum.StrEnum):
    """How node invocations are separated from one another."""

    PROCESS = "process"  # a fresh process per invocation, forked from a warm zygote
    NONE = "none"  # warm workers run invocation after invocation (for measuring)


def parse_isolation(value) -> Isolation:
    try:
        return Isolation(value)
    except ValueError:
        choices = ", ".join(repr(i.value) for i in Isolation)
        raise ValueError(f"unknown isolation {value!r}: use one of {choices}") from None


class SandboxError(OSError):
    """A barrier could not be put in place (the invocation does not run)."""


_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                   ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise SandboxError(err, f"prctl({option}): {os.strerror(err)}")


def make_undumpable() -> None:
    """Close /proc/PID/{fd,mem}, ptrace and process_vm_readv of this process
    to other processes that lack CAP_SYS_PTRACE (also: no core dumps)."""
    _prctl(PR_SET_DUMPABLE, 0)


def is_dumpable() -> bool:
    return _libc.prctl(ctypes.c_int(3), 0, 0, 0, 0) == 1  # PR_GET_DUMPABLE


def children_may_die_with_this_thread() -> bool:
    """May a child started from the calling thread ask for ``kill_me_with_parent``?
    PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so only
    the main thread, which lives as long as the process, qualifies."""
    return threading.current_thread() is threading.main_thread()


def kill_me_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when the thread that forked it exits."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the call
        os._exit(1)


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 63


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Give up every capability for good (a no-op for a process that has none)."""
    if _effective_caps() & (1 << _CAP_SETPCAP):
        _prctl(PR_SET_SECUREBITS, _SECBITS_LOCKED_NOROOT)
        for cap in range(_last_cap() + 1):
            try:
                _prctl(PR_CAPBSET_DROP, cap)
            except SandboxError:
                break  # past the kernel's last capability
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except SandboxError:
        pass  # kernels before 4.3 have no ambient set
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise SandboxError(err, f"capset: {os.strerror(err)}")
    if _effective_caps():
        raise SandboxError(0, "capabilities are still effective after capset")


def enter_invocation() -> None:
    """The barriers of one invocation; call in the forked process before any
    node code runs. Raises SandboxError when one cannot be set."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    make_undumpable()  # inherited from the zygote; stated, not assumed
    drop_capabilities()
