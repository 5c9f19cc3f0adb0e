"""zerrow: true zero-copy Apache Arrow between processes.

``pool()`` is a pyarrow MemoryPool whose every buffer lives in memfd shared
memory; ``scope()`` makes it the default around a block of code, in segments
of its own; ``owns()`` tells whether an object lies entirely in zerrow memory.
"""

import importlib as _importlib
import os as _os

# Where each public name lives. They load on first use (PEP 562): the compiled core
# loads pyarrow, which the `zerrow run` client and `zerrow service` never need.
# The first use also checks the installed pyarrow against this build (_pyarrow_check).
_EXPORTS = {
    "pool": "_core", "preload_active": "_core",
    "scope": "_scope", "PoolStats": "_pool_stats", "preload_path": "_preload", "preload_env": "_preload",
    **dict.fromkeys(["owns", "stats", "print_stats", "release_unused", "kernel_module_available"],
                    "_pool_api"),
    **dict.fromkeys(["share", "attach", "send", "recv", "recv_share", "Share", "ShareCounters",
                     "ShareError", "Channel"], "_sharing"),
}

__all__ = [
    "pool", "scope", "owns", "stats", "print_stats", "PoolStats", "release_unused", "preload_path", "preload_env", "preload_active",
    "share", "attach", "send", "recv", "recv_share", "Share", "ShareCounters", "ShareError", "Channel",
    "kernel_module_available",
]


def __getattr__(name: str):
    where = "_core" if name == "_core" else _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if where == "_core":  # through the pyarrow check
        from ._pyarrow_check import load_core

        module = load_core()
    else:
        module = _importlib.import_module(f"{__name__}.{where}")
    value = module if name == "_core" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def _under_preload() -> bool:
    from ._preload import PRELOAD_NAME

    return PRELOAD_NAME in _os.environ["LD_PRELOAD"]


if "LD_PRELOAD" in _os.environ and _under_preload():
    # Under the preload library, importing zerrow_pool is what routes Arrow's default pool
    # to zerrow (the core registers with the library as it loads): keep that promise.
    __getattr__("pool")
