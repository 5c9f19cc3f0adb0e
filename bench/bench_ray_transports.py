"""How a table moves between two Ray actors: Ray's object store, a zerrow share, a
Ray Direct Transport, Arrow Flight. The measurements behind docs/DISTRIBUTED.md.

    flock /tmp/zerrow-bench.lock python bench/bench_ray_transports.py [--sizes 100M,1G] [--reps 5]

A producer actor holds a table (int64, float64, int32, float32 and string columns,
born in zerrow's pool; ``handoff_methods.make_table``); a consumer actor receives it.
Each transfer is timed end to end from the driver (from asking the producer until
the consumer holds the table), median of ``--reps`` after one warm-up; then the
consumer touches one byte per page of every buffer (timed apart: the cost of mapping
what it received). Bytes copied are counted, not inferred: the objects' sizes and
locations in Ray's object stores (``get_object_locations``), the share counters, the
consumer's private memory growth (RssAnon) and the loopback bytes (/proc/net/dev).

Same machine (one Ray node):
- ``object-store``: ``ray.put`` in the producer, the ObjectRef passed to the
  consumer, ``ray.get`` there (a read-only view of plasma);
- ``zerrow-socket``: ``zerrow_pool.share`` in the producer, descriptor and fds sent
  over a Unix socket (SCM_RIGHTS), ``attach`` in the consumer: what the agent does;
- ``rdt-zerrow``: a Ray Direct Transport registered for ``pyarrow.Table``
  (``register_tensor_transport``, one-sided): the producer's method, declared
  ``@ray.method(tensor_transport="ZERROW")``, returns the table; Ray calls the
  transport to share it, and the consumer's side attaches the fds it opens through
  ``/proc/PID/fd`` of the producer (a second producer/consumer pair);
- ``object-store after-rdt``: ``object-store`` between that second pair: what the
  RDT registration does to the ordinary ``ray.put`` of a table in those actors.

Across Ray nodes (``ray.cluster_utils.Cluster``, two nodes on this machine, custom
resources placing the producer on one and the consumer on the other):
- ``object-store``: as above; Ray's object manager pulls the object to the
  consumer's node (gRPC, chunked) and ``ray.get`` views it there;
- ``object-store+copy``: the same, then copied once into zerrow memory
  (``zerrow_pool.share`` of foreign buffers): what a zerrow agent receiving an edge
  from another machine does;
- ``flight``: a ``pyarrow.flight`` server in the producer's process, ``do_get`` +
  ``read_all`` in the consumer;
- ``flight+share``: the same read inside ``zerrow_pool.scope()``, then shared: how
  many more bytes a zerrow agent would copy to hand it to its workers;
- ``flight+share preload``: the same in a consumer run under zerrow's preload library
  (Arrow's C++ default pool routed into zerrow memory too).
"""
from __future__ import annotations

import argparse
import json
from math import nan
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

os.environ.setdefault("RAY_worker_niceness", "0")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import ray  # noqa: E402
import zerrow_pool  # noqa: E402
from ray.experimental import (  # noqa: E402
    CommunicatorMetadata, TensorTransportManager, TensorTransportMetadata, register_tensor_transport)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from handoff_methods import make_table  # noqa: E402

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
STORE = 3 << 30  # object store per Ray node: room for a 1 GiB table and its copies
# Ray's workers import handoff_methods (the actors' make_table) from here
RUNTIME_ENV = {"env_vars": {"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))}}


# ------------------------------------------------- a Ray Direct Transport for Arrow tables
@dataclass
class ZerrowTransportMeta(TensorTransportMetadata):
    pid: int = 0
    shares: list = field(default_factory=list)  # per table: (descriptor, the producer's fd numbers)


class ZerrowTransport(TensorTransportManager):
    """One-sided: the producer shares, the consumer opens the producer's fds via /proc."""

    def __init__(self):
        self.live = {}  # obj_id -> the producer's Shares, closed when Ray frees the object

    def tensor_transport_backend(self) -> str:
        return "ZERROW"

    @staticmethod
    def is_one_sided() -> bool:
        return True

    @staticmethod
    def can_abort_transport() -> bool:
        return False

    def actor_has_tensor_transport(self, actor) -> bool:
        return True

    def extract_tensor_transport_metadata(self, obj_id, rdt_object):
        shares = [zerrow_pool.share(t) for t in rdt_object]
        self.live[obj_id] = shares
        return ZerrowTransportMeta(
            tensor_meta=[(t.num_rows, "arrow") for t in rdt_object], tensor_device="cpu",
            pid=os.getpid(), shares=[(s.descriptor, list(s.fds)) for s in shares])

    def get_communicator_metadata(self, src_actor, dst_actor, backend=None):
        return CommunicatorMetadata()

    def recv_multiple_tensors(self, obj_id, meta, communicator_meta, target_buffers=None):
        tables = []
        for descriptor, fds in meta.shares:
            mine = [os.open(f"/proc/{meta.pid}/fd/{fd}", os.O_RDONLY) for fd in fds]
            try:
                tables.append(zerrow_pool.attach(descriptor, mine))
            finally:
                for fd in mine:
                    os.close(fd)
        return tables

    def send_multiple_tensors(self, tensors, meta, communicator_meta):
        raise NotImplementedError("one-sided")

    def garbage_collect(self, obj_id, meta, tensors):
        for s in self.live.pop(obj_id, []):
            s.close()

    def abort_transport(self, obj_id, communicator_meta):
        pass


# before the class that names it in @ray.method (the actors learn it from the driver)
register_tensor_transport("ZERROW", ["cpu"], ZerrowTransport, pa.Table)


# ------------------------------------------------------------------------ measures
def memory_kib() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssShmem:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def loopback_bytes() -> int:
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])  # received bytes (= sent, on lo)
    return 0


def touch_pages(table) -> float:
    """Read one byte per 4 KiB page of every buffer; seconds taken."""
    t0 = time.perf_counter()
    for col in table.columns:
        for chunk in col.chunks:
            for buf in chunk.buffers():
                if buf is not None and buf.size:
                    np.frombuffer(buf, dtype=np.uint8)[::4096].max()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- actors
@ray.remote(num_cpus=0, enable_tensor_transport=True)
class Producer:
    def __init__(self, nbytes: int):
        with zerrow_pool.scope():
            self.table = make_table(nbytes)
        self.sock = None
        self.flight = None

    def describe(self) -> dict:
        return {"rows": self.table.num_rows, "nbytes": self.table.get_total_buffer_size(),
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def put(self) -> list:
        return [ray.put(self.table)]  # in a list: the consumer gets the ref, not the value

    def connect(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)

    def send_share(self) -> dict:
        c = zerrow_pool.send(self.sock, self.table)
        return {"copied": int(c.bytes_copied), "zero_copy": int(c.bytes_zero_copy)}

    @ray.method(tensor_transport="ZERROW")
    def rdt_table(self):
        return self.table

    def serve_flight(self) -> str:
        import pyarrow.flight as fl

        batches = self.table.to_batches(max_chunksize=1 << 20)

        class Server(fl.FlightServerBase):
            def do_get(self, context, ticket):
                return fl.RecordBatchStream(pa.Table.from_batches(batches))

        self.flight = Server("grpc://0.0.0.0:0")
        host = ray.util.get_node_ip_address()
        return f"grpc://{host}:{self.flight.port}"

    def close(self) -> None:
        if self.flight is not None:
            self.flight.shutdown()
        if self.sock is not None:
            self.sock.close()


# enable_tensor_transport: without it the consumer has no "_ray_system" concurrency group,
# so Ray's receive task for an RDT argument queues behind the task waiting for it (a hang)
@ray.remote(num_cpus=0, enable_tensor_transport=True)
class Consumer:
    def __init__(self):
        self.held = None
        self.base = None
        self.listener = self.sock = None

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def listen(self, path: str) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)

    def accept(self) -> None:
        self.sock, _ = self.listener.accept()

    def mark(self) -> None:
        """Drop the last table and take the memory baseline of the next transfer."""
        self.held = None
        self.base = memory_kib()

    def _hold(self, table, extra: dict | None = None) -> dict:
        self.held = table
        after = memory_kib()
        out = {"rows": table.num_rows, "zerrow_memory": zerrow_pool.owns(table),
               "preload": zerrow_pool.preload_active,
               "anon_growth": (after["RssAnon"] - self.base["RssAnon"]) * 1024}
        out["touch_s"] = touch_pages(table)
        touched = memory_kib()
        out["anon_growth_touched"] = (touched["RssAnon"] - self.base["RssAnon"]) * 1024
        out["shmem_growth_touched"] = (touched["RssShmem"] - self.base["RssShmem"]) * 1024
        out.update(extra or {})
        return out

    def get_ref(self, refs: list) -> dict:
        return self._hold(ray.get(refs[0]))

    def get_ref_copy(self, refs: list) -> dict:
        return self._hold_in_zerrow(ray.get(refs[0]))

    def _hold_in_zerrow(self, table) -> dict:
        """Hold ``table`` as a zerrow agent would hand it to its workers: in zerrow
        memory (``share`` copies the buffers that are not there yet)."""
        share = zerrow_pool.share(table, seal=False)
        held = share.attach()
        share.close()
        del table
        return self._hold(held, {"share_copied": int(share.bytes_copied)})

    def recv_share(self) -> dict:
        return self._hold(zerrow_pool.recv(self.sock))

    def take(self, table) -> dict:
        return self._hold(table)

    def flight_get(self, location: str, into_zerrow: bool) -> dict:
        import pyarrow.flight as fl

        client = fl.FlightClient(location)
        if not into_zerrow:
            return self._hold(client.do_get(fl.Ticket(b"t")).read_all())
        with zerrow_pool.scope():
            return self._hold_in_zerrow(client.do_get(fl.Ticket(b"t")).read_all())

    def close(self) -> None:
        self.held = None
        for s in (self.sock, self.listener):
            if s is not None:
                s.close()


# ---------------------------------------------------------------------- the transfers
def clocked(consumer, transfer) -> dict:
    """The consumer's memory baseline, then ``transfer()`` timed from the driver."""
    ray.get(consumer.mark.remote())
    t0 = time.perf_counter()
    res = transfer()
    res["e2e_s"] = time.perf_counter() - t0
    return res


def object_store_once(producer, consumer, method="get_ref"):
    def once():
        refs = []

        def transfer():
            refs.extend(ray.get(producer.put.remote()))
            return ray.get(getattr(consumer, method).remote(refs))

        res = clocked(consumer, transfer)
        loc = ray.experimental.get_object_locations(refs)[refs[0]]
        res.update(store_bytes=loc["object_size"] * len(loc["node_ids"]), store_copies=len(loc["node_ids"]))
        return res
    return once


def zerrow_socket_once(producer, consumer):
    def once():
        sent = []

        def transfer():
            sent.append(producer.send_share.remote())
            return ray.get(consumer.recv_share.remote())

        res = clocked(consumer, transfer)
        counters = ray.get(sent[0])
        res.update(share_copied=counters["copied"], share_zero_copy=counters["zero_copy"])
        return res
    return once


def rdt_once(producer, consumer):
    return lambda: clocked(consumer, lambda: ray.get(consumer.take.remote(producer.rdt_table.remote())))


def flight_once(consumer, location, into_zerrow):
    return lambda: clocked(consumer, lambda: ray.get(consumer.flight_get.remote(location, into_zerrow)))


def measure(table_info: dict, reps: int, transports: dict) -> dict:
    """Each transport's ``once()`` makes one transfer and returns the consumer's
    result with its ``e2e_s``. One warm-up each, then ``reps`` rounds taking the
    transports in turn (a busy moment of the machine hits them alike); medians."""
    out, runs = {"table": table_info}, {}
    for name, once in transports.items():
        try:
            once()
            runs[name] = []
        except Exception as e:  # noqa: BLE001 - a transport that fails is a finding: recorded
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    for _ in range(reps):
        for name in runs:
            lo = loopback_bytes()
            res = transports[name]()
            res.update(hold_s=res["e2e_s"] - res["touch_s"], loopback=loopback_bytes() - lo)
            runs[name].append(res)
    for name, rs in runs.items():
        out[name] = {"runs": rs, "last": rs[-1], **{
            f"median_{k}": statistics.median(r[k] for r in rs) for k in ("hold_s", "touch_s", "e2e_s")}}
    return {k: out[k] for k in ["table", *transports]}


def close(*actors) -> None:
    for a in actors:
        if a is not None:
            ray.get(a.close.remote())


def same_machine(nbytes: int, reps: int) -> dict:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=STORE,
             runtime_env=RUNTIME_ENV)
    actors = []
    sockdir = tempfile.TemporaryDirectory(prefix="zerrow-bench-")
    try:
        # RDT gets a pair of actors of its own: once an actor ran an RDT method for
        # pa.Table, Ray pickles every pa.Table it puts in-band (see "after-rdt")
        producer, consumer, rdt_producer, rdt_consumer = actors = [
            Producer.remote(nbytes), Consumer.remote(), Producer.remote(nbytes), Consumer.remote()]
        info = ray.get(producer.describe.remote())
        path = os.path.join(sockdir.name, "s")
        ray.get(consumer.listen.remote(path))
        ray.get(producer.connect.remote(path))
        ray.get(consumer.accept.remote())
        return measure(info, reps, {"object-store": object_store_once(producer, consumer),
                                    "zerrow-socket": zerrow_socket_once(producer, consumer),
                                    "rdt-zerrow": rdt_once(rdt_producer, rdt_consumer),
                                    "object-store after-rdt": object_store_once(rdt_producer, rdt_consumer)})
    finally:
        close(*actors)
        sockdir.cleanup()
        # Ray 2.60 keeps the driver's RDT manager (its monitor thread and queue of
        # transfers) across ray.shutdown(); the next session's monitor then fails on
        # the finished session's objects. Stop it and let the next session make its own.
        worker = ray._private.worker.global_worker
        worker.rdt_manager.shutdown()
        worker._rdt_manager = None
        ray.shutdown()


def across_nodes(nbytes: int, reps: int) -> dict:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, resources={"node_a": 1}, object_store_memory=STORE, include_dashboard=False))
    actors = []
    try:
        cluster.add_node(num_cpus=1, resources={"node_b": 1}, object_store_memory=STORE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, runtime_env=RUNTIME_ENV)
        on_b = {"resources": {"node_b": 0.01}}
        # a second consumer under zerrow's preload library, which routes Arrow's C++
        # default pool into zerrow memory: does a Flight read land there?
        preload = zerrow_pool.preload_env({})["LD_PRELOAD"]
        preloaded = {"env_vars": {**RUNTIME_ENV["env_vars"], "LD_PRELOAD": preload}}
        producer, consumer, consumer_preloaded = actors = [
            Producer.options(resources={"node_a": 0.01}).remote(nbytes), Consumer.options(**on_b).remote(),
            Consumer.options(**on_b, runtime_env=preloaded).remote()]
        info = ray.get(producer.describe.remote())
        if info["node"] == ray.get(consumer.node.remote()):
            raise RuntimeError("producer and consumer landed on one node")
        location = ray.get(producer.serve_flight.remote())
        return measure(info, reps, {
            "object-store": object_store_once(producer, consumer),
            "object-store+copy": object_store_once(producer, consumer, "get_ref_copy"),
            "flight": flight_once(consumer, location, False),
            "flight+share": flight_once(consumer, location, True),
            "flight+share preload": flight_once(consumer_preloaded, location, True)})
    finally:
        close(*actors)
        ray.shutdown()
        cluster.shutdown()


# -------------------------------------------------------------------------- report
def mib(n) -> str:
    return f"{n / 2**20:,.0f} MiB"


def table_rows(title: str, res: dict, base: str) -> list[str]:
    """Per transport: time until the consumer holds the table, and until it also
    touched every page of it; bandwidths and ratios against ``base``; bytes."""
    nbytes = res["table"]["nbytes"]
    lines = [f"\n{title}: {res['table']['rows']:,} rows, {mib(nbytes)}",
             f"{'transport':22} {'hold s':>7} {'GB/s':>6} {'ratio':>6} {'+touch s':>8} {'GB/s':>6} {'ratio':>6} "
             f"{'store':>9} {'anon+':>9} {'loopback':>9} {'share copy':>10}  zerrow mem"]
    ref = res.get(base, {})
    for name, r in res.items():
        if name == "table":
            continue
        if "error" in r:
            lines.append(f"{name:22} {r['error']}")
            continue
        last = r["last"]
        hold, e2e = r["median_hold_s"], r["median_e2e_s"]
        lines.append(
            f"{name:22} {hold:7.3f} {nbytes / hold / 1e9:6.2f} {ref.get('median_hold_s', nan) / hold:5.1f}x "
            f"{e2e:8.3f} {nbytes / e2e / 1e9:6.2f} {ref.get('median_e2e_s', nan) / e2e:5.1f}x "
            f"{mib(last.get('store_bytes', 0)):>9} {mib(last['anon_growth']):>9} "
            f"{mib(last['loopback']):>9} {mib(last.get('share_copied', 0)):>10}  {last['zerrow_memory']}")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100M,1G", help="table sizes, comma-separated (K, M, G suffixes)")
    ap.add_argument("--reps", type=int, default=5, help="timed transfers per transport and size")
    ap.add_argument("--only", choices=["same", "across"], help="one of the two settings only")
    ap.add_argument("--out", default=os.path.join(".benchmarks", "ray_transports.json"))
    ap.add_argument("--print", metavar="JSON", help="print the tables of an earlier run's --out file, run nothing")
    args = ap.parse_args()
    if args.print:
        with open(args.print) as f:
            for key, r in json.load(f)["runs"].items():
                print("\n".join(table_rows(key, r, "object-store")))
        return
    sizes = [int(s[:-1]) * UNITS[s[-1].upper()] for s in args.sizes.split(",")]
    results = {"ray": ray.__version__, "pyarrow": pa.__version__, "reps": args.reps,
               "cpu": platform.processor() or platform.machine(), "ncpu": os.cpu_count(), "runs": {}}
    settings = [(k, f, t) for k, f, t in (("same", same_machine, "same machine"),
                                          ("across", across_nodes, "across Ray nodes"))
                if args.only in (None, k)]
    lines = []
    for size, label in zip(sizes, args.sizes.split(",")):
        for key, run, title in settings:
            r = results["runs"][f"{key}-{label}"] = run(size, args.reps)
            new = table_rows(f"{title}, {label}", r, "object-store")
            print("\n".join(new), flush=True)
            lines += new
    print("\n".join(["", "all:"] + lines))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()
