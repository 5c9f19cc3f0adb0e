"""What a client and the service say to each other.

Messages are pickles framed by ``zerrow_pool._frame`` (the transport frame of
docs/SHARED_IPC.md in pure Python, plus fds, on a socket that only this user
can reach), at both ends: the client loads neither the compiled core nor pyarrow. Every connection starts with ``hello``, which carries the
client's :func:`identity`; the service answers only a client of its own
identity (same zerrow version, same build, same Python environment), since runs
exchange objects of zerrow's own classes. ``stop`` and ``status`` are answered
before that check, with builtins only, so any version can stop any other.

Requests (client -> service), each a dict with ``op``:
  hello   {identity}                       -> {ok, identity, pid, [message]}
  status  {}                               -> {ok, status: dict}
  stop    {}                               -> {ok}; the service then exits
  run     {pipeline, cwd, env, runtime, outputs}
          -> any number of {kind: EVENT, event}, {kind: WAITING, ...}
          -> then {kind: RESULT, report, outputs: {name: (descriptor, nfds)}} + fds
             or {kind: ERROR, message, exit_code}
"""
from __future__ import annotations

import enum
import hashlib
import importlib.util
import os
import sys


class Op(enum.StrEnum):
    HELLO = "hello"
    STATUS = "status"
    STOP = "stop"
    RUN = "run"


class Reply(enum.StrEnum):
    EVENT = "event"        # a progress event of the run
    WAITING = "waiting"    # another run holds the service; this one is queued
    RESULT = "result"      # the run finished (ok or failed): report and outputs
    ERROR = "error"        # the run could not start (bad pipeline, bad options)


def identity() -> dict:
    """What must match between a client and the service it uses.

    The build is the installed extension file's identity, found without loading it
    (that would load pyarrow into the client)."""
    from .. import _build_info

    core = importlib.util.find_spec("zerrow_pool._core").origin
    st = os.stat(core)
    build = hashlib.sha1(f"{core}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    # sys.prefix, not sys.executable: a venv's python and python3 are one interpreter
    return {"version": _build_info.ZERROW_VERSION, "build": build, "python": sys.prefix}


def mismatch(mine: dict, theirs: dict) -> str | None:
    """Why a service of identity ``theirs`` cannot serve a client of ``mine``, or None."""
    for field, what in (("version", "zerrow version"), ("build", "zerrow build"),
                        ("python", "Python environment")):
        if mine.get(field) != theirs.get(field):
            return f"{what} {theirs.get(field)} (this command has {mine.get(field)})"
    return None


# Environment variables that differ between shells without changing what a run does;
# everything else in the client's environment selects (or starts) the workers it runs in.
VOLATILE_ENV = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES", "TERM", "PS1",
                          "PROMPT_COMMAND", "HISTFILE", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY",
                          "TMUX_PANE", "WINDOWID", "PYTEST_CURRENT_TEST"})


def run_env(environ) -> dict:
    return {k: v for k, v in environ.items() if k not in VOLATILE_ENV}
