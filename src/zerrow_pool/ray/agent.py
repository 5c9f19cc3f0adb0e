"""The zerrow agent: one Ray actor per Ray node, holding that machine's Runtime.

The agent is the machine's long-lived zerrow runtime (warm workers, decode
cache, memory budget), as the local service is for ``zerrow run``. It runs the
fragments the driver gives it as local runs. A fragment's inputs from other
machines arrive as Ray ObjectRefs: the agent gets each table (a read-only view
of this node's object store) and copies it once into zerrow memory, which is
the transfer's receiving copy. Inputs held from an earlier fragment on this
machine are re-shared in place (zero-copy). Outputs other machines need are
put into Ray's object store once; outputs later fragments here need stay held.

Everything a run holds is keyed by its run id and dropped by ``release``.
"""
from __future__ import annotations

import os
import socket

from ..pipeline.runtime import Runtime
from ..pipeline.dag import Source
from ..pipeline.payloads import SharePayload
from ..pipeline.specs import OutputCounters
from ..pipeline.zerrow_api import require
from .placement import source_identity
from .steps import fragment_pipeline

HOLD, SEND = "hold", "send"  # what happens to a fragment's exported output


class Agent:
    def __init__(self, options: dict):
        import ray

        self.rt = Runtime(**options)
        self.node_id = ray.get_runtime_context().get_node_id()
        self.held: dict = {}  # (run id, pipeline, step) -> pa.Table, mapped from zerrow shares
        self.sent: dict = {}  # (run id, pipeline, step) -> ObjectRef this agent owns
        self.sources_seen: set = set()

    def describe(self) -> dict:
        return {"node_id": self.node_id, "host": socket.gethostname(), "pid": os.getpid(),
                "workers": self.rt.n_workers, "sources_seen": frozenset(self.sources_seen)}

    def run(self, run_id: str, jobs: list) -> list:
        """Run fragments concurrently; per job: its report, the ObjectRefs of
        outputs sent, and the bytes received per input from other machines."""
        states, out, live = [], [], []
        for job in jobs:
            given, received, lost = {}, {}, None
            for step, (how, ref) in job["inputs"].items():
                try:
                    table = self._input(run_id, job["pipeline"], step, how, ref)
                except Exception as e:  # noqa: BLE001 - the holder of an input is gone
                    lost = (step, f"{type(e).__name__}: {e}")
                    break
                given[step], received[step] = _payload(table)
                del table  # the object store's copy can go as soon as Ray likes
            if lost:
                for p in given.values():
                    p.close()
                out.append({"key": job["key"], "lost_input": lost})
                continue
            p = fragment_pipeline(job["pipeline"], job["steps"], list(job["inputs"]))
            states.append(self.rt.new_state(p, outputs=list(job["exports"]), given=given))
            entry = {"key": job["key"], "received": received}
            out.append(entry)
            live.append((job, entry))
        results = self.rt.run_states(states, raise_on_error=False) if states else []
        for (job, entry), res in zip(live, results):
            entry["report"] = res.report
            entry["sent"], entry["sent_bytes"] = {}, {}
            self.sources_seen |= {source_identity(s) for s in job["steps"] if isinstance(s, Source)}
            if not res.ok:
                continue
            for step, hows in job["exports"].items():
                key = (run_id, job["pipeline"], step)
                if HOLD in hows:
                    self.held[key] = res.outputs[step]
                if SEND in hows:
                    entry["sent"][step] = self._send(key, res.outputs[step])
                    entry["sent_bytes"][step] = res.outputs[step].get_total_buffer_size()
        return out

    def _input(self, run_id, pipeline, step, how, ref):
        if how == HOLD:
            return self.held[(run_id, pipeline, step)]
        import ray

        return ray.get(ref[0])

    def _send(self, key, table):
        import ray

        ref = ray.put(table)
        self.sent[key] = ref
        return [ref]  # in a list, so that Ray hands the ref over instead of resolving it

    def send_held(self, run_id: str, pipeline: str, step: str) -> list:
        """Put a held output into the object store (its consumer moved machines)."""
        key = (run_id, pipeline, step)
        return [self.sent[key]] if key in self.sent else self._send(key, self.held[key])

    def release(self, run_id: str, pipeline: str | None = None, step: str | None = None) -> None:
        """Drop what run ``run_id`` holds here: one step's output, or everything."""
        for d in (self.held, self.sent):
            for key in [k for k in d if k[0] == run_id and (step is None or k == (run_id, pipeline, step))]:
                del d[key]

    def holdings(self) -> dict:
        """What this agent still holds: tables, sent objects, live run payloads."""
        cached = self.rt.resources.cached
        return {"held": len(self.held), "sent": len(self.sent), "runs": len(self.rt.runs),
                "payloads": sum(1 for k in self.rt.resources.live if k not in cached)}

    def close(self) -> None:
        self.rt.close()


def _payload(table):
    """A zerrow share of ``table`` for a local run, and the bytes copied to make it
    (0 when its buffers already are zerrow memory, e.g. an output held here)."""
    share = require().share(table, seal=False)
    fds, share.fds = share.fds, []  # the payload owns them from here
    counters = OutputCounters.of_share(share)
    payload = SharePayload(share.descriptor, fds, table.num_rows, int(share.nbytes), counters)
    return payload, counters.bytes_copied
