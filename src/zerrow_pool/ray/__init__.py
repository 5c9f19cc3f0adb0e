"""zerrow pipelines on a Ray cluster: one zerrow agent per Ray node, zerrow shares
inside a machine, Ray's object store between machines (see docs/DISTRIBUTED.md).

    with zp.Runtime(ray="auto") as rt:        # or "local", or "HOST:PORT"
        result = rt.run(pipeline)

Ray is an optional dependency: ``pip install 'zerrow-pool[ray]'``.
"""
from __future__ import annotations

INSTALL_HINT = "pip install 'zerrow-pool[ray]'"


class RayUnavailable(RuntimeError):
    """Ray is not installed; the message says how to install it."""


def require_ray():
    """The ``ray`` module, or RayUnavailable with a one-line install hint."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"running on Ray needs the ray package, which is not installed "
                             f"({e.name or 'ray'}); install it with: {INSTALL_HINT}") from None
    return ray


def connect(address, *args, **kwargs):
    """``Runtime(ray=address, ...)``: a RayRuntime on the cluster at ``address``."""
    require_ray()
    from .driver import RayRuntime

    return RayRuntime(address, *args, **kwargs)


__all__ = ["INSTALL_HINT", "RayUnavailable", "connect", "require_ray"]
