"""The long-lived local runtime service behind ``zerrow run``.

A ``zerrow run`` that finds no service starts one (one per user, reached over a
Unix socket in a private directory) and hands it the run; the service keeps
its runtimes (warm workers, their pools, the decode cache) between runs, so
the second run of a pipeline, or another pipeline over the same inputs,
starts warm. It exits after ``ZERROW_SERVICE_IDLE`` seconds without a client
(default 600). ``zerrow service status|stop`` inspect and stop it;
``zerrow run --no-service`` keeps the run in its own process.

Files: ``location.py`` (where the socket lives, and why it is safe),
``protocol.py`` (messages and the identity a client and service must share),
``server.py`` (the service process), ``client.py`` (what ``zerrow run`` calls).
"""
from .client import ServiceClient, ServiceError, ServiceMismatch
from .location import ServiceDirError, service_dir

__all__ = ["ServiceClient", "ServiceDirError", "ServiceError", "ServiceMismatch", "service_dir"]
