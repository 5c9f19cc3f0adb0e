"""Self-contained SIPC test inputs: a descriptor plus images of the segment files
it refers to, so that an input replays in any process without the producer.

A corpus entry is a JSON file::

    {"name": ..., "why": ..., "expect": "error" | "ok" | "any", "match": "substring of the error",
     "descriptor": base64, "segments": [{"size": n, "sealed": true, "chunks": [[offset, base64], ...]}],
     "fds": [segment index, ...]   # optional: which image travels as fds[i] (default: one each)
     "fd_kinds": ["memfd" | "pipe" | "tmpfile" | "unsealed" | "closed"]  # optional, per fd

Replaying an entry (``replay``) creates a sealed memfd per segment image,
attaches with validate_full True and False, and on success reads every value;
anything but success or ShareError is a failure, a crash kills the process
(run it in a subprocess: see fuzz_sipc.py).
"""

import base64
import fcntl
import hashlib
import json
import os
import struct
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for test_share_common

F_SEAL_FUTURE_WRITE = 0x10
SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def b64(b):
    return base64.b64encode(bytes(b)).decode()


def unb64(s):
    return base64.b64decode(s)


# -- capturing a real share


def _data_ranges(fd, size):
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def capture(share, name="", why="", expect="ok"):
    """A corpus entry holding a share's descriptor and the referenced bytes of its segments."""
    from test_share_common import all_nodes, parse_sipc

    d = parse_sipc(share.descriptor)
    wanted = [[] for _ in share.fds]
    for n in all_nodes(d):
        for seg, off, ln in n["buffers"]:
            if seg >= 0 and ln:
                wanted[seg].append((off, off + ln))
    segments = []
    for i, fd in enumerate(share.fds):
        size = os.fstat(fd).st_size
        chunks = []
        for lo, hi in _merge(wanted[i]):
            chunks.append([lo, b64(os.pread(fd, hi - lo, lo))])
        segments.append({"size": size, "sealed": True, "chunks": chunks})
    return {"name": name, "why": why, "expect": expect, "descriptor": b64(share.descriptor),
            "segments": segments}


def _merge(ranges):
    out = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


# -- materializing fds


def make_segment(image):
    """A memfd holding a segment image, sealed as zerrow seals (unless sealed is false);
    returns a read-only fd to it."""
    fd = os.memfd_create("zerrow-corpus", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, image["size"])
        for off, data in image["chunks"]:
            os.pwrite(fd, unb64(data), off)
        if image.get("sealed", True):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def odd_fd(kind):
    """An fd that is not a sealed memfd, for fd-type checks; (fd, cleanup)."""
    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)
        return r
    if kind == "tmpfile":
        f = tempfile.TemporaryFile(dir="/tmp")
        f.write(b"\0" * 65536)
        f.flush()
        fd = os.dup(f.fileno())
        f.close()
        return fd
    if kind == "unsealed":
        fd = os.memfd_create("zerrow-unsealed", os.MFD_CLOEXEC)
        os.ftruncate(fd, 1 << 20)
        return fd
    if kind == "closed":
        fd = os.open("/dev/null", os.O_RDONLY)
        os.close(fd)
        return fd
    if kind == "socket":
        import socket
        a, b = socket.socketpair()
        b.close()
        return a.detach()
    if kind == "dir":
        return os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    raise ValueError(kind)


def materialize(entry):
    """(descriptor bytes, fds, fds to close) for an entry."""
    images = [make_segment(img) for img in entry["segments"]]
    order = entry.get("fds", list(range(len(images))))
    kinds = entry.get("fd_kinds", ["memfd"] * len(order))
    fds, extra = [], []
    for idx, kind in zip(order, kinds):
        if kind == "memfd":
            fds.append(images[idx])
        else:
            fd = odd_fd(kind)
            fds.append(fd)
            if kind != "closed":
                extra.append(fd)
    return unb64(entry["descriptor"]), fds, images + extra


# -- replaying


def touch(obj):
    """Reads every value (validated objects only): an IPC write of the object
    (which must succeed), then a conversion of every value to Python.

    The conversion may fail without any memory-safety issue for schemas that
    are odd but accepted by Arrow's IPC reader: field names or metadata that are
    not UTF-8, decimal precision/scale Python rejects, unknown time zones...
    Those Python-level errors are tolerated; a crash is not."""
    import decimal

    import pyarrow as pa

    if isinstance(obj, (pa.Array, pa.ChunkedArray)):
        obj = pa.table({"x": obj})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, obj.schema) as w:
        w.write(obj)
    try:
        obj.to_pylist()
    except (UnicodeDecodeError, decimal.InvalidOperation, ValueError, OverflowError, pa.ArrowInvalid,
            pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass


def attach_both(descriptor, fds):
    """Attach with validate_full True (then read everything) and False (attach only).
    Returns (outcome_full, outcome_light): 'ok' or the ShareError message."""
    import zerrow_pool as z

    outcomes = []
    for full in (True, False):
        try:
            obj = z.attach(descriptor, fds, validate_full=full)
        except z.ShareError as e:
            outcomes.append(str(e))
            continue
        if full:
            touch(obj)
        del obj
        outcomes.append("ok")
    return tuple(outcomes)


def replay(entry):
    """Replays an entry; raises AssertionError when the outcome is not what it expects."""
    descriptor, fds, to_close = materialize(entry)
    try:
        full, light = attach_both(descriptor, fds)
    finally:
        for fd in to_close:
            os.close(fd)
    expect = entry.get("expect", "any")
    if expect == "error":
        assert full != "ok" and light != "ok", (entry["name"], full, light)
        if entry.get("match"):
            m = entry["match"].lower()
            assert m in full.lower() and m in light.lower(), (entry["name"], entry["match"], full)
    elif expect == "ok":
        assert full == "ok" and light == "ok", (entry["name"], full, light)
    return full, light


def entry_id(entry):
    h = hashlib.sha1(entry["descriptor"].encode())
    h.update(json.dumps(entry.get("fds"), sort_keys=True).encode())
    h.update(json.dumps(entry.get("fd_kinds"), sort_keys=True).encode())
    return h.hexdigest()[:12]


def save(entry, directory=HERE, prefix=""):
    path = os.path.join(directory, f"{prefix}{entry['name'] or entry_id(entry)}.json")
    with open(path, "w") as f:
        json.dump(entry, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def load_all(directory=HERE):
    out = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                out.append(json.load(f))
    return out


def with_descriptor(entry, descriptor, **changes):
    e = dict(entry, descriptor=b64(descriptor))
    e.update(changes)
    return e


def struct_pack_header(version=1, kind=1, flags=1, num_rows=0):
    return b"ZSIP" + struct.pack("<HBBq", version, kind, flags, num_rows)
