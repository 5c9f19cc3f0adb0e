"""RayRuntime: ``Runtime(ray=ADDRESS)``, the DAG spread over a Ray cluster's agents.

The driver (this process) places steps on machines, splits each pipeline into
per-machine fragments (placement.py), sends each machine's ready fragments to
its agent in one call, and wires fragment outputs: held on the machine when
the consumer is there too, sent through Ray's object store when it is not.
When an agent's node dies mid-run, its unfinished fragments run again on the
surviving machines if every input they need still exists; otherwise the run
fails naming the lost machine.
"""
from __future__ import annotations

import hashlib
import inspect
import time
import uuid

from ..pipeline.options import RuntimeOptions, keyword, takes_options
from ..pipeline.report import EdgeRecord, NodeRecord, RunReport, RunResult, raise_first_failure
from ..pipeline.states import Status, StepKind
from . import require_ray
from .agent import HOLD, SEND, Agent
from ..pipeline.budget import parse_budget
from .placement import (Machine, PlacementError, decoded_bytes, fragments, place,
                        source_identity)
from .steps import describe

NAMESPACE = "zerrow"
_RESOURCE_SKIP = ("CPU", "GPU", "memory", "object_store_memory")


@takes_options(
    (keyword("on_event"), "Accepted as Runtime takes it; progress is not forwarded from "
                          "agents (docs/DISTRIBUTED.md)."),
    (keyword("pins"), "Maps step names to custom Ray resources: such a step runs on a node "
                      "offering that resource (while one is alive)."),
    leading=[inspect.Parameter("address", inspect.Parameter.POSITIONAL_OR_KEYWORD)])
class RayRuntime:
    """``Runtime`` on a Ray cluster: same ``run`` / ``run_many`` / context manager.

    ``address``: ``"auto"`` (a running cluster), ``"local"`` (start a Ray
    instance here, shut down by ``close``) or a Ray address. The options
    below configure each machine's agent Runtime (``workers`` defaults to the
    node's CPUs); an unknown one raises TypeError.
    """

    def __init__(self, address, *args, on_event=None, pins=None, **options):
        options = RuntimeOptions.arguments(*args, **options)  # each agent resolves them
        ray = self.ray = require_ray()
        self.owns_ray = False
        if not ray.is_initialized():
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False, namespace=NAMESPACE)
                self.owns_ray = True
            else:
                try:
                    ray.init(address=address, log_to_driver=False, namespace=NAMESPACE)
                except ConnectionError as e:
                    raise ConnectionError(
                        f"no Ray cluster to connect to at {address!r} ({str(e).splitlines()[0]}); "
                        "start one with `ray start --head`, or use --ray local / "
                        "Runtime(ray='local') to start one for this run") from None
        self.options = options
        self.pins = dict(pins or {})
        self.n_workers = 0
        self.agents: dict = {}  # node id -> actor handle
        self.machines: dict = {}  # node id -> Machine
        self.closed = False
        self._refresh()

    # ----------------------------------------------------------------- agents
    def _refresh(self) -> None:
        """An agent on every live node (created once, then reused: warm)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = _agent_class(self.ray)
        alive = [n for n in self.ray.nodes() if n["Alive"]]
        new = []
        for node in alive:
            nid = node["NodeID"]
            if nid in self.agents:
                continue
            cpus = int(node["Resources"].get("CPU", 1)) or 1
            opts = dict(self.options, workers=self.options["workers"] or cpus)
            # One agent per node and configuration (like the local service's runtimes):
            # a runtime asking for other workers, budget or cache gets its own agent.
            config = hashlib.sha1(repr(sorted(opts.items())).encode()).hexdigest()[:8]
            self.agents[nid] = actor.options(
                name=f"zerrow-agent-{nid}-{config}", namespace=NAMESPACE, get_if_exists=True,
                lifetime=None if self.owns_ray else "detached", num_cpus=0, max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(nid, soft=False),
                # Arrow sizes its thread pool from OMP_NUM_THREADS, which Ray sets to 1.
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(cpus)}},
            ).remote(opts)
            res = {k: v for k, v in node["Resources"].items()
                   if k not in _RESOURCE_SKIP and not k.startswith("node:")}
            memory = (parse_budget(self.options["memory_budget"]) if self.options["memory_budget"]
                      else int(node["Resources"].get("memory", 0)))
            self.machines[nid] = Machine(nid, f"{node['NodeManagerAddress']}/{nid[:8]}", res,
                                         memory=memory)
            new.append(nid)
        live_ids = {n["NodeID"] for n in alive}
        for nid in [n for n in self.agents if n not in live_ids]:
            self._forget(nid)
        # An agent found warm tells what its decode cache holds; later, the runs say.
        infos = self._ask({nid: self.agents[nid].describe.remote() for nid in new})
        for nid, info in infos.items():
            self.machines[nid].sources_seen = set(info["sources_seen"])
            self.machines[nid].workers = info["workers"]
        self.n_workers = sum(self.machines[nid].workers for nid in self.agents)

    def _ask(self, calls: dict) -> dict:
        """Results of per-agent calls; agents that died are forgotten."""
        out = {}
        for nid, ref in calls.items():
            try:
                out[nid] = self.ray.get(ref)
            except self.ray.exceptions.RayActorError:
                self._forget(nid)
        return out

    def _forget(self, nid) -> None:
        self.agents.pop(nid, None)

    def holdings(self) -> dict:
        """Per machine label: what its agent still holds (tables, objects, payloads)."""
        got = self._ask({nid: a.holdings.remote() for nid, a in self.agents.items()})
        return {self.machines[nid].label: h for nid, h in got.items()}

    # ------------------------------------------------------------------ public
    def run(self, pipeline, *, outputs=None, raise_on_error: bool = True) -> RunResult:
        return self.run_many([pipeline], outputs=outputs, raise_on_error=raise_on_error)[0]

    def run_many(self, pipelines, *, outputs=None, raise_on_error: bool = True) -> list:
        if self.closed:
            raise RuntimeError("runtime is closed")
        names = [p.name for p in pipelines]
        if len(set(names)) < len(names):  # a run's data is keyed by pipeline and step name
            raise ValueError(f"run_many on Ray needs distinct pipeline names, got {names}")
        self._refresh()
        machines = [self.machines[n] for n in self.agents]
        sizes = {(p.name, s.name): decoded_bytes(s) for p in pipelines for s in p.order
                 if s.kind == StepKind.SOURCE}
        where = place(pipelines, machines, self.pins, sizes=sizes)
        frags = []
        for p in pipelines:
            frags += fragments(p, where, first_key=len(frags))
        run = _Run(self, pipelines, frags, outputs)
        try:
            results = run.execute()
        finally:  # an agent runs calls from here in order: no need to wait for this one
            for a in self.agents.values():
                a.release.remote(run.id)
        if raise_on_error:
            raise_first_failure(results)
        return results

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.owns_ray:
            self._ask({nid: a.close.remote() for nid, a in self.agents.items()})
            self.ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_AGENT_CLASS = []


def _agent_class(ray):
    if not _AGENT_CLASS:
        _AGENT_CLASS.append(ray.remote(Agent))
    return _AGENT_CLASS[0]


class _Run:
    """One ``run_many`` call: fragments, where their outputs are, what failed."""

    def __init__(self, rt: RayRuntime, pipelines, frags, outputs):
        self.rt, self.ray = rt, rt.ray
        self.id = uuid.uuid4().hex
        self.pipelines = pipelines
        self.frags = {f.key: f for f in frags}
        self.status = {f.key: Status.PENDING for f in frags}
        self.keep = {p.name: set(p.sinks if outputs is None else outputs) for p in pipelines}
        for p in pipelines:
            unknown = self.keep[p.name] - set(p.by_name)
            if unknown:
                raise KeyError(f"outputs {sorted(unknown)} are not steps of pipeline {p.name!r}")
        self.producer = {(f.pipeline.name, s): f.key for f in frags for s in f.steps}
        self.held_on: dict = {}  # (pipeline, step) -> node id whose agent holds it
        self.sent: dict = {}  # (pipeline, step) -> ObjectRef
        self.inputs_how: dict = {}  # fragment key -> {step: HOLD | SEND}
        self.exports: dict = {}  # fragment key -> {step: {HOLD, SEND}}
        self.sent_bytes: dict = {}  # (pipeline, step) -> buffer bytes its producer sent
        self.reports: dict = {}  # fragment key -> its local RunReport
        self.received: dict = {}  # fragment key -> {step: bytes}
        self.tables: dict = {}  # (pipeline, step) -> kept output, fetched by the driver
        self.failed: dict = {}  # pipeline name -> error
        self.t0 = time.monotonic()

    # --------------------------------------------------------------- schedule
    def execute(self) -> list:
        inflight: dict = {}  # ObjectRef -> (node id, [fragment keys])
        while True:
            busy = {nid for nid, _ in inflight.values()}
            by_machine: dict = {}
            for f in self.frags.values():
                if self.status[f.key] == Status.PENDING and f.machine not in busy \
                        and self._ready(f):
                    by_machine.setdefault(f.machine, []).append(f)
            for nid, ready in by_machine.items():
                jobs = [self._job(f) for f in ready]
                for f in ready:
                    self.status[f.key] = Status.RUNNING
                inflight[self.rt.agents[nid].run.remote(self.id, jobs)] = (nid, [f.key for f in ready])
            if not inflight:
                break
            done, _ = self.ray.wait(list(inflight), num_returns=1)
            nid, keys = inflight.pop(done[0])
            try:
                replies = self.ray.get(done[0])
            except self.ray.exceptions.RayActorError as e:
                self._machine_lost(nid, keys, e)
                continue
            except self.ray.exceptions.RayTaskError as e:  # the agent itself raised
                for k in keys:
                    self.status[k] = Status.FAILED
                    self._fail(self.frags[k].pipeline, f"the zerrow agent on "
                               f"{self.rt.machines[nid].label} failed: {str(e).splitlines()[-1]}")
                continue
            for reply in replies:
                self._on_reply(nid, reply)
        return [self._result(p) for p in self.pipelines]

    def _ready(self, f) -> bool:
        if f.pipeline.name in self.failed:
            return False
        return all(self.status[d] == Status.DONE for d in f.deps)

    def _job(self, f) -> dict:
        p = f.pipeline
        inputs, how = {}, {}
        for step in f.external_inputs():
            key = (p.name, step)
            if self.held_on.get(key) == f.machine:
                inputs[step], how[step] = (HOLD, None), HOLD
            else:
                inputs[step], how[step] = (SEND, [self._sent_ref(key)]), SEND
        self.inputs_how[f.key] = how
        exports: dict = {}
        for step in f.steps:
            hows = set()
            for c in p.consumers[step]:
                g = self.frags[self.producer[(p.name, c)]]
                if g.key != f.key:  # held until its consumers are done, wherever they run
                    hows |= {HOLD} if g.machine == f.machine else {HOLD, SEND}
            if step in self.keep[p.name]:
                hows.add(SEND)
            if hows:
                exports[step] = hows
        self.exports[f.key] = exports
        return {"key": f.key, "pipeline": p.name, "inputs": inputs, "exports": exports,
                "steps": [describe(p.by_name[s]) for s in f.steps]}

    def _sent_ref(self, key):
        if key not in self.sent:  # held on another machine: its consumer moved there
            nid = self.held_on[key]
            self.sent[key] = self.ray.get(self.rt.agents[nid].send_held.remote(self.id, *key))[0]
        return self.sent[key]

    # ---------------------------------------------------------------- replies
    def _on_reply(self, nid, reply) -> None:
        f = self.frags[reply["key"]]
        p = f.pipeline
        if "lost_input" in reply:
            step, error = reply["lost_input"]
            self.status[f.key] = Status.FAILED
            g = self.frags[self.producer[(p.name, step)]]
            self._fail(p, f"machine {self.rt.machines[g.machine].label} was lost mid-run holding "
                          f"the output of {step!r}, which {f.steps[0]!r} still needed "
                          f"({error.splitlines()[0]})")
            return
        rep = reply["report"]
        self.reports[f.key] = (nid, rep)
        self.received[f.key] = reply["received"]
        if rep.status != Status.DONE:
            self.status[f.key] = Status.FAILED
            self._fail(p, rep.error or "a fragment failed")
            return
        self.status[f.key] = Status.DONE
        self.rt.machines[nid].sources_seen |= {
            source_identity(p.by_name[s]) for s in f.steps if p.by_name[s].kind == StepKind.SOURCE}
        for step, hows in self.exports[f.key].items():
            if HOLD in hows:
                self.held_on[(p.name, step)] = nid
        self.sent_bytes.update({(p.name, s): n for s, n in reply["sent_bytes"].items()})
        for step, ref in reply["sent"].items():
            self.sent[(p.name, step)] = ref[0]
            if step in self.keep[p.name]:  # fetched now: the objects die with their agent
                self.tables[(p.name, step)] = self.ray.get(ref[0])
        for step in f.external_inputs():
            if all(self.status[self.producer[(p.name, c)]] == Status.DONE
                   for c in p.consumers[step]):
                self._drop((p.name, step))

    def _drop(self, key) -> None:
        """An output all of whose consumers are done: its holder lets it go."""
        self.sent.pop(key, None)
        nid = self.held_on.pop(key, None)
        if nid in self.rt.agents:
            self.rt.agents[nid].release.remote(self.id, *key)

    def _fail(self, p, error: str) -> None:
        self.failed.setdefault(p.name, error)

    def _machine_lost(self, nid, keys, error) -> None:
        label = self.rt.machines[nid].label
        self.rt._forget(nid)
        for k in keys:
            self.status[k] = Status.PENDING
        lost = {key for key, where in self.held_on.items() if where == nid}
        for key in lost:
            del self.held_on[key]
        survivors = [self.rt.machines[n] for n in self.rt.agents]
        for f in self.frags.values():
            if self.status[f.key] != Status.PENDING or f.machine != nid:
                continue
            if f.pipeline.name in self.failed:
                continue
            needed = [s for s in f.external_inputs()
                      if self.status[self.producer[(f.pipeline.name, s)]] == Status.DONE
                      and (f.pipeline.name, s) in lost]
            if needed or not survivors:
                why = (f"it held the output of {needed[0]!r}, which {f.steps[0]!r} still needed"
                       if needed else "no other machine runs a zerrow agent")
                self._fail(f.pipeline, f"machine {label} was lost mid-run ({why}): "
                                       f"{type(error).__name__}")
                continue
            f.machine = self._replace(f, survivors)
        for f in self.frags.values():  # outputs of finished fragments there are gone
            if self.status[f.key] == Status.DONE and f.machine == nid \
                    and f.pipeline.name not in self.failed and self._still_needed(f):
                self._fail(f.pipeline, f"machine {label} was lost mid-run holding outputs of "
                                       f"{f.steps} that other steps still needed")

    def _still_needed(self, f) -> bool:
        p = f.pipeline
        for s in f.steps:
            for c in p.consumers[s]:
                if self.status[self.producer[(p.name, c)]] != Status.DONE:
                    return True
        return False

    def _replace(self, f, survivors) -> str:
        """A surviving machine for a fragment: where most of its inputs are held."""
        votes: dict = {}
        for s in f.external_inputs():
            m = self.held_on.get((f.pipeline.name, s))
            if m is not None:
                votes[m] = votes.get(m, 0) + 1
        for s in f.steps:
            res = self.rt.pins.get(s)
            for m in survivors:
                if res and m.resources.get(res, 0) > 0:
                    votes[m.node_id] = votes.get(m.node_id, 0) + 100
        if votes:
            return max(votes, key=votes.get)
        return survivors[0].node_id

    # ----------------------------------------------------------------- report
    def _result(self, p) -> RunResult:
        rep = RunReport(p.name, self.rt.options["transport"], self.rt.n_workers,
                        bool(self.rt.options["cache"]), budget=None)
        recs = {s.name: NodeRecord(s.name, s.kind) for s in p.order}
        edges = []
        machines_peak: dict = {}
        for f in self.frags.values():
            if f.pipeline is not p or f.key not in self.reports:
                continue
            nid, frep = self.reports[f.key]
            label = self.rt.machines[nid].label
            machines_peak[nid] = max(machines_peak.get(nid, 0), frep.peak_held)
            for n in frep.nodes:
                if n.name in f.steps:
                    n.machine = label
                    recs[n.name] = n
            how = self.inputs_how.get(f.key, {})
            for e in frep.edges:
                if e.src in how and how[e.src] == SEND:
                    e.bytes = self.sent_bytes[(p.name, e.src)]
                    e.route, e.transferred = "transfer", self.received[f.key].get(e.src, 0)
                    e.bytes_zero_copy, e.bytes_copied = 0, e.transferred
                else:
                    e.route = "share"
                edges.append(e)
            for k in ("cache_hits", "cache_misses", "cache_evictions", "decoded_bytes",
                      "spills", "spilled_bytes", "workers_replaced"):
                setattr(rep, k, getattr(rep, k) + getattr(frep, k))
        for r in recs.values():
            if r.status in (Status.PENDING, Status.RUNNING):
                r.status = Status.SKIPPED
        order = {s.name: i for i, s in enumerate(p.order)}
        rep.nodes = [recs[s.name] for s in p.order]
        rep.edges = sorted(edges, key=lambda e: (order[e.dst], order[e.src]))
        rep.peak_held = sum(machines_peak.values())
        rep.wall_s = time.monotonic() - self.t0
        rep.error = self.failed.get(p.name)
        rep.status = Status.FAILED if rep.error else Status.DONE
        outputs = {} if rep.error else {s: self.tables[(p.name, s)] for s in self.keep[p.name]}
        return RunResult(rep, outputs)


__all__ = ["PlacementError", "RayRuntime"]
