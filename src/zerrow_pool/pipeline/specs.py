"""What travels between the coordinator and a worker about a table, as data.

A worker *publishes* its output as a ``Published`` (a decode: ``PublishedColumns``,
one ``Published`` per column), with its ``OutputCounters``; the coordinator
wraps it in a payload (``payloads.py``). To hand a payload to a task, the
coordinator *encodes* it as an input spec: ``ShareInput``, ``FileInput`` or
``ColumnsInput``, which the worker opens with ``payloads.open_input``.
Descriptors travel beside the message; ``fds`` is each spec's
``(start, count)`` slice of them.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.StrEnum):
    SHARE = "share"  # a zerrow descriptor and its segments' read-only fds
    FILE = "file"  # a nameless Arrow IPC file's read-only fd


@dataclass(frozen=True)
class OutputCounters:
    """How an output's ``nbytes`` reached shared memory, under the sharing layer's
    names (``zerrow_pool.ShareCounters``), which the report's records keep.

    ``bytes_zero_copy``: bytes referenced in place; ``bytes_copied``: bytes
    copied to publish it (all of them for the copy transport);
    ``bytes_exposed``: other bytes a reader can see in what is sent (padding,
    other data in its segments, the IPC file's framing).
    """

    bytes_zero_copy: int = 0
    bytes_copied: int = 0
    bytes_exposed: int = 0

    @classmethod
    def of_share(cls, share) -> "OutputCounters":
        """The counters of a ``zerrow_pool.Share`` made by this process."""
        return cls(int(share.bytes_zero_copy), int(share.bytes_copied), int(share.bytes_exposed))


@dataclass(frozen=True)
class Published:
    """One published output: what the coordinator needs to hold it."""

    kind: Kind
    rows: int
    nbytes: int
    counters: OutputCounters = OutputCounters()
    descriptor: bytes = b""  # Kind.SHARE
    fds: tuple = (0, 0)


@dataclass(frozen=True)
class PublishedColumns:
    """A decode's output: one ``Published`` per column, in the task's column order."""

    parts: list
    rows: int


@dataclass(frozen=True)
class ShareInput:
    descriptor: bytes
    fds: tuple


@dataclass(frozen=True)
class FileInput:
    fds: tuple


@dataclass(frozen=True)
class ColumnsInput:
    """A source assembled from decode-cache entries: per field, its chunks' shares."""

    schema: object
    cols: list
