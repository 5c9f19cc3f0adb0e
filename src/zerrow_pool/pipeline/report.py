"""Run reports: per node, per edge and per run, as data and as text."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .budget import fmt_bytes
from .states import Status, StepKind


@dataclass
class NodeRecord:
    name: str
    kind: StepKind
    status: Status = Status.PENDING
    worker_pid: int | None = None
    attempts: int = 0
    start: float | None = None
    end: float | None = None
    rows: int = 0
    bytes: int = 0
    bytes_zero_copy: int = 0
    bytes_copied: int = 0
    bytes_exposed: int = 0
    peak: int = 0
    spilled: bool = False
    cache_hits: int = 0
    cache_misses: int = 0
    timing: dict = field(default_factory=dict)
    error: str | None = None
    machine: str | None = None  # on Ray: the machine (Ray node) that ran it

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            return 0.0
        return self.end - self.start


@dataclass
class EdgeRecord:
    src: str
    dst: str
    bytes: int = 0
    bytes_zero_copy: int = 0
    bytes_copied: int = 0
    # On Ray: "share" (both ends on one machine) or "transfer" (through Ray's object
    # store), and the bytes the transfer delivered to the consumer's machine.
    route: str | None = None
    transferred: int = 0


@dataclass
class RunReport:
    pipeline: str
    transport: str
    workers: int
    cache: bool
    budget: int | None = None
    wall_s: float = 0.0
    status: Status = Status.RUNNING
    nodes: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    peak_held: int = 0  # everything the runtime held, idle cached decodes included
    peak_pinned: int = 0  # what the runs pinned: intermediates and the cached decodes they read
    peak_with_workers: int = 0  # peak_held + a running task's temporaries (estimate)
    spilled_bytes: int = 0
    spills: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    decoded_bytes: int = 0
    workers_replaced: int = 0
    error: str | None = None

    def record_totals(self, resources, cache) -> None:
        """When the run finishes: the runtime's memory peaks (a ResourceManager)
        and, with a decode cache, its counters (hits and misses of this run's nodes)."""
        self.peak_held = resources.peak
        self.peak_pinned = resources.peak_pinned
        self.peak_with_workers = max(resources.peak, resources.peak_with_workers)
        if cache:
            self.cache_hits = sum(n.cache_hits for n in self.nodes)
            self.cache_misses = sum(n.cache_misses for n in self.nodes)
            self.cache_evictions = cache.evictions
            self.decoded_bytes = cache.decoded_bytes

    def node(self, name: str) -> NodeRecord:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def edge_bytes(self) -> int:
        return sum(e.bytes for e in self.edges)

    @property
    def edge_zero_copy(self) -> int:
        return sum(e.bytes_zero_copy for e in self.edges)

    @property
    def transferred_bytes(self) -> int:
        """Bytes moved between machines (Ray runs; 0 on one machine)."""
        return sum(e.transferred for e in self.edges)

    @property
    def bytes_copied(self) -> int:
        """Bytes copied to publish node outputs (each once) plus bytes spilled to disk."""
        return sum(n.bytes_copied for n in self.nodes if n.status == Status.DONE) + self.spilled_bytes

    @property
    def cpu_s(self) -> float:
        """CPU seconds (user + system) the workers spent on this run's tasks."""
        return sum(n.timing.get("cpu_user_s", 0) + n.timing.get("cpu_sys_s", 0) for n in self.nodes)

    @property
    def zero_copy_rate(self) -> float:
        moved = sum(e.bytes_zero_copy + e.bytes_copied for e in self.edges)
        return self.edge_zero_copy / moved if moved else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(zero_copy_rate=self.zero_copy_rate, bytes_copied=self.bytes_copied,
                 edge_bytes=self.edge_bytes, cpu_s=self.cpu_s,
                 transferred_bytes=self.transferred_bytes)
        return d

    def format(self) -> str:
        """Human-readable tables (what ``zerrow run`` prints)."""
        lines = [f"pipeline {self.pipeline}: {self.status} in {self.wall_s:.2f}s, "
                 f"{self.cpu_s:.2f} CPU-s in workers "
                 f"(transport={self.transport}, workers={self.workers}, "
                 f"cache={'on' if self.cache else 'off'}"
                 + (f", budget={fmt_bytes(self.budget)}" if self.budget else "") + ")", ""]
        hdr = f"{'node':<22}{'status':<9}{'time':>8}{'rows':>12}{'bytes':>11}{'zero-copy':>11}" \
              f"{'copied':>11}{'exposed':>11}{'peak':>11}"
        lines += [hdr, "-" * len(hdr)]  # the columns are explained by COLUMNS below
        for n in self.nodes:
            extra = " (spilled)" if n.spilled else ""
            if n.cache_hits or n.cache_misses:
                extra += f" cache {n.cache_hits} hit/{n.cache_misses} miss"
            if n.machine:
                extra += f" on {n.machine}"
            lines.append(f"{n.name[:21]:<22}{n.status:<9}{n.seconds:>7.2f}s{n.rows:>12,}"
                         f"{fmt_bytes(n.bytes):>11}{fmt_bytes(n.bytes_zero_copy):>11}"
                         f"{fmt_bytes(n.bytes_copied):>11}{fmt_bytes(n.bytes_exposed):>11}"
                         f"{fmt_bytes(n.peak):>11}{extra}")
        lines += ["", COLUMNS]
        if self.edges:
            lines += ["", f"{'edge':<40}{'bytes':>11}{'zero-copy':>11}{'copied':>11}"]
            for e in self.edges:
                name = f"{e.src} -> {e.dst}"
                route = (f" transfer, {fmt_bytes(e.transferred)} moved" if e.route == "transfer"
                         else f" {e.route}" if e.route else "")
                lines.append(f"{name[:39]:<40}{fmt_bytes(e.bytes):>11}"
                             f"{fmt_bytes(e.bytes_zero_copy):>11}{fmt_bytes(e.bytes_copied):>11}{route}")
        lines += ["", f"zero-copy rate {self.zero_copy_rate:.2%} of {fmt_bytes(self.edge_bytes)} "
                  f"moved over edges; {fmt_bytes(self.bytes_copied)} copied in all; "
                  f"peak held by the runtime {fmt_bytes(self.peak_held)} (cache included; "
                  f"~{fmt_bytes(self.peak_with_workers)} with a worker's temporaries), "
                  f"{fmt_bytes(self.peak_pinned)} of it pinned by runs rather than cached "
                  f"for later ones"]
        if any(e.route for e in self.edges):
            lines.append(f"between machines: {fmt_bytes(self.transferred_bytes)} transferred over "
                         f"{sum(e.route == 'transfer' for e in self.edges)} edge(s); the other "
                         "edges stayed zerrow shares on one machine")
        if self.cache:
            lines.append(f"decode cache: {self.cache_hits} hits, {self.cache_misses} misses, "
                         f"{fmt_bytes(self.decoded_bytes)} decoded, {self.cache_evictions} evicted")
        if self.spills:
            lines.append(f"spilled {self.spills} intermediates ({fmt_bytes(self.spilled_bytes)}) to disk")
        if self.workers_replaced:
            lines.append(f"{self.workers_replaced} worker(s) replaced after dying")
        for n in self.nodes:
            if n.status == Status.FAILED and n.error:
                lines += ["", f"node {n.name} failed (attempt {n.attempts}):", n.error.rstrip()]
        return "\n".join(lines)


COLUMNS = ("bytes: the output's size; zero-copy / copied: how much of it was shared in place "
           "or copied to be shared; exposed: other bytes readers of the output could map (free "
           "or unrelated memory in its segments); peak: the most the node's worker allocated "
           "while it ran")


class NodeFailed(RuntimeError):
    """A node raised, its worker died, or the run did not fit its budget."""

    def __init__(self, message: str, report: RunReport):
        super().__init__(message)
        self.report = report


def raise_first_failure(results) -> None:
    """``Runtime.run_many(raise_on_error=True)``: NodeFailed for the first run that failed."""
    for r in results:
        if not r.ok:
            raise NodeFailed(r.report.error or "pipeline failed", r.report)


class OutputNotKept(KeyError):
    """``result[name]`` for a step whose output the run did not keep."""

    def __str__(self):  # KeyError would show the message quoted, as a repr
        return str(self.args[0])


class RunResult:
    """Outputs and the report of one run.

    Parameters
    ----------
    report : RunReport
        What happened, per node, edge and for the whole run.
    outputs : dict
        ``{step name: pyarrow.Table}`` of the outputs the run kept: its sinks
        by default, else those named in ``Runtime.run(outputs=[...])``. Empty
        if the run failed.
    """

    def __init__(self, report: RunReport, outputs: dict):
        self.report = report
        self.outputs = outputs

    @property
    def ok(self) -> bool:
        """True if every node finished."""
        return self.report.status == Status.DONE

    def __getitem__(self, name):
        """The kept output table of step ``name``; OutputNotKept (a KeyError) otherwise."""
        try:
            return self.outputs[name]
        except KeyError:
            raise OutputNotKept(self._missing(name)) from None

    def _missing(self, name) -> str:
        steps = [n.name for n in self.report.nodes]
        if name not in steps:
            return (f"pipeline {self.report.pipeline!r} has no step named {name!r} "
                    f"(steps: {', '.join(steps)})")
        if not self.ok:
            return f"no outputs: the run failed ({self.report.error})"
        kept = ", ".join(map(repr, self.outputs)) or "none"
        return (f"the output of {name!r} was not kept (kept: {kept}); pass "
                f"outputs=[{name!r}] to Runtime.run to keep it")

    def __repr__(self):
        return f"<RunResult {self.report.pipeline} {self.report.status} outputs={list(self.outputs)}>"
