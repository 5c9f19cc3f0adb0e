"""The ``zerrow`` command.

    zerrow run PIPELINE.py [--workers N] [--memory-budget SIZE] [--node-memory-limit SIZE]
                           [--transport zerrow|copy] [--no-cache] [--json FILE] [--no-service]
                           [--isolation process|none] [--ray auto|local|ADDRESS]
                           [--output NODE=PATH ...] [--show NODE ...]
    zerrow service status|stop
    zerrow demo [--rows N] [--workers N] [--pipeline movement|zones|both]
    zerrow doctor [--json] [--no-measure]

``cmd_run`` is built from reusable steps (``validate_run_args``,
``_runtime_options``, ``requested_outputs``, ``deliver_outputs``), shared by
the in-process path (``--no-service``, ``--ray``) and the service path.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time

from .pipeline.budget import SIZE_GRAMMAR as SIZE_HELP


def _progress_printer(stream=sys.stderr):
    from .pipeline.states import Event

    t0 = time.monotonic()

    def on_event(ev):
        kind, rec = Event(ev["event"]), ev.get("record")
        stamp = f"[{time.monotonic() - t0:7.2f}s] {ev['pipeline']}"
        if kind == Event.START:
            print(f"{stamp} > {ev['node']} started", file=stream, flush=True)
        elif kind == Event.DONE:
            from .pipeline import fmt_bytes

            extra = f", {rec.cache_hits} cached chunks" if rec.cache_hits else ""
            print(f"{stamp} + {ev['node']} done in {rec.seconds:.2f}s: {rec.rows:,} rows, "
                  f"{fmt_bytes(rec.bytes)}, copied {fmt_bytes(rec.bytes_copied)}{extra}",
                  file=stream, flush=True)
        elif kind == Event.FAILED:
            last = (ev.get("error") or "").strip().splitlines()[-1:] or [""]
            print(f"{stamp} ! {ev['node']} FAILED: {last[0]}", file=stream, flush=True)
        elif kind == Event.SKIPPED:
            print(f"{stamp} - {ev['node']} skipped (an upstream node failed)", file=stream, flush=True)
        elif kind == Event.RETRY:
            print(f"{stamp} ~ {ev['node']} retrying after a failure", file=stream, flush=True)
        elif kind == Event.SPILL:
            print(f"{stamp} v {ev['node']} spilled to disk to stay within the budget",
                  file=stream, flush=True)
    return on_event


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so the runtime stops its workers and cleans up."""


def _on_sigterm(signum, frame):
    raise Terminated()


OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "ipc", ".feather": "ipc",
                  ".ipc": "ipc"}


def _output_targets(args) -> list:
    """``--output NODE=PATH`` as [(node, path)]; ValueError for a malformed one."""
    out = []
    for spec in args.output or ():
        node, sep, path = spec.partition("=")
        if not sep or not node or not path:
            raise ValueError(f"--output {spec!r}: write NODE=PATH, e.g. --output totals=totals.parquet")
        out.append((node, path))
    return out


def _check_writable(path: str, flag: str) -> str | None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return f"{flag} {path}: directory {parent} does not exist"
    if not os.access(parent, os.W_OK):
        return f"{flag} {path}: directory {parent} is not writable"
    if os.path.isdir(path):
        return f"{flag} {path} is a directory; give a file name"
    return None


def validate_run_args(args, pipeline=None) -> str | None:
    """Check ``zerrow run``'s options before any work starts.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed ``zerrow run`` arguments.
    pipeline : Pipeline, optional
        When given, ``--output`` / ``--show`` node names are checked against it.

    Returns
    -------
    str or None
        What is wrong, phrased for the user, or None if everything is usable.
    """
    from .pipeline import budget
    from .pipeline.pipeline_file import PipelineDefinitionError, check_pipeline_path

    try:  # here, so that a mistyped path starts no service
        check_pipeline_path(args.pipeline)
    except (FileNotFoundError, PipelineDefinitionError) as e:
        return str(e)
    if args.workers is not None and args.workers < 1:
        return f"--workers must be at least 1, not {args.workers}"
    if args.memory_budget is not None:
        try:
            budget.parse_budget(args.memory_budget, budget.MIN_BUDGET)
        except ValueError as e:
            return f"--memory-budget: {e}"
    if args.node_memory_limit is not None:
        try:
            budget.parse_size(args.node_memory_limit)
        except ValueError as e:
            return f"--node-memory-limit: {e}"
    if args.show_rows < 1:
        return f"--show-rows must be at least 1, not {args.show_rows}"
    if args.json:
        problem = _check_writable(args.json, "--json")
        if problem:
            return problem
    try:
        targets = _output_targets(args)
    except ValueError as e:
        return str(e)
    for node, path in targets:
        ext = os.path.splitext(path)[1].lower()
        if ext not in OUTPUT_FORMATS:
            return (f"--output {node}={path}: unknown format {ext or '(no extension)'}; use "
                    + ", ".join(OUTPUT_FORMATS) + " (Parquet, or Arrow IPC for .arrow/.feather/.ipc)")
        problem = _check_writable(path, "--output")
        if problem:
            return problem
    if pipeline is not None:
        for node in [n for n, _ in targets] + list(args.show or ()):
            if node not in pipeline.by_name:
                return (f"no node named {node!r} in pipeline {pipeline.name!r} "
                        f"(nodes: {', '.join(s.name for s in pipeline.order)})")
    return None


def _runtime_options(args) -> dict:
    """``Runtime(**options)`` for validated ``zerrow run`` arguments (picklable: no callbacks)."""
    return dict(workers=args.workers, transport=args.transport, memory_budget=args.memory_budget,
                cache=not args.no_cache, strict_budget=args.strict_budget,
                isolation=args.isolation, node_memory_limit=args.node_memory_limit)


def requested_outputs(args) -> list:
    """The nodes whose output ``--output`` / ``--show`` need: pass as ``Runtime.run(outputs=)``."""
    return list(dict.fromkeys([n for n, _ in _output_targets(args)] + list(args.show or ())))


def deliver_outputs(args, result, stream=None) -> str | None:
    """Write ``--output`` files and print ``--show`` previews from a finished run.

    Parameters
    ----------
    args : argparse.Namespace
        Validated ``zerrow run`` arguments.
    result : RunResult
        Its ``outputs`` dict holds a ``pyarrow.Table`` per requested node.
    stream : file, optional
        Where previews go (stdout by default).

    Returns
    -------
    str or None
        An error message if a file could not be written, or the run failed
        and so delivered nothing that was asked for; else None.
    """
    stream = stream or sys.stdout
    if not result.ok:  # the report says what failed; say what was not delivered
        wanted = requested_outputs(args)
        return (f"the run failed, so --output/--show delivered nothing ({', '.join(wanted)})"
                if wanted else None)
    for node, path in _output_targets(args):
        table = result.outputs[node]
        try:
            _write_table(table, path)
        except OSError as e:
            return f"--output {node}={path}: {e}"
        print(f"wrote {node} ({table.num_rows:,} rows) to {path}", file=stream)
    for node in args.show or ():
        print("\n" + format_preview(node, result.outputs[node], args.show_rows), file=stream)
    return None


def _write_table(table, path: str) -> None:
    import pyarrow as pa

    if OUTPUT_FORMATS[os.path.splitext(path)[1].lower()] == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
        return
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def format_preview(name: str, table, rows: int = 10, width: int = 24) -> str:
    """The first ``rows`` rows of ``table`` as aligned text, under a title line."""
    head = table.slice(0, rows).to_pylist()
    cols = table.column_names

    def cell(v):
        text = "null" if v is None else str(v)
        return text if len(text) <= width else text[:width - 1] + "…"

    grid = [cols] + [[cell(r[c]) for c in cols] for r in head]
    widths = [max(len(row[i]) for row in grid) for i in range(len(cols))]
    lines = [f"{name}: {table.num_rows:,} rows x {table.num_columns} columns"
             + (f" (first {len(head)})" if table.num_rows > len(head) else "")]
    for i, row in enumerate(grid):
        lines.append("  ".join(v.rjust(w) for v, w in zip(row, widths)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_run(args) -> int:
    from . import pipeline as zp

    problem = validate_run_args(args)
    pipe = None
    # The service loads the file itself; here only to check --output/--show names.
    if problem is None and (args.no_service or args.ray or args.output or args.show):
        try:
            pipe = zp.load_pipeline_file(args.pipeline)
        except (zp.PipelineDefinitionError, FileNotFoundError) as e:
            problem = str(e)
        else:
            problem = validate_run_args(args, pipe)
    if problem:
        print(f"zerrow run: {problem}", file=sys.stderr)
        return 2
    on_event = None if args.quiet else _progress_printer()
    if args.no_service or args.ray:
        from .ray import RayUnavailable

        where = {"ray": args.ray} if args.ray else {}
        try:
            rt = zp.Runtime(**_runtime_options(args), on_event=on_event, **where)
        except (zp.ZerrowUnavailable, zp.WorkerStartError, RayUnavailable, OSError,
                ValueError) as e:
            print(f"zerrow run: {e}", file=sys.stderr)
            return 2
        with rt:
            result = rt.run(pipe, outputs=requested_outputs(args), raise_on_error=False)
    else:
        from .service import ServiceClient, ServiceDirError, ServiceError
        from .service.client import RunRefused

        def on_wait(running):
            what = f" ({running['pipeline']})" if running else ""
            print(f"zerrow run: the service is busy with another run{what}; waiting",
                  file=sys.stderr, flush=True)

        try:
            result = ServiceClient().run(args.pipeline, runtime=_runtime_options(args),
                                         outputs=requested_outputs(args), on_event=on_event,
                                         on_wait=on_wait)
        except RunRefused as e:
            print(f"zerrow run: {e}", file=sys.stderr)
            return e.exit_code
        except (ServiceError, ServiceDirError, OSError) as e:
            print(f"zerrow run: {e}", file=sys.stderr)
            return 2
    print(result.report.format())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.report.to_dict(), f, indent=1, default=str)
    problem = deliver_outputs(args, result)
    if problem:
        print(f"zerrow run: {problem}", file=sys.stderr)
        return 1
    return 0 if result.ok else 1


def cmd_service(args) -> int:
    from .service import ServiceClient, ServiceError

    client = ServiceClient()
    try:
        if args.action == "stop":
            pid = client.stop()
            print(f"stopped the zerrow service (pid {pid})" if pid else
                  f"no zerrow service is running ({client.sock_path})")
            return 0
        status = client.status()
    except (ServiceError, OSError) as e:
        print(f"zerrow service: {e}", file=sys.stderr)
        return 2
    if status is None:
        print(f"no zerrow service is running ({client.sock_path})")
        return 3  # like `systemctl status` of a stopped unit
    if args.json:
        print(json.dumps(status, indent=1, default=str))
        return 0
    from .pipeline import fmt_bytes

    ident = status["identity"]
    print(f"zerrow service {ident['version']} (build {ident['build']}), pid {status['pid']}, "
          f"up {status['uptime_s']:.0f}s, {status['runs_served']} runs served")
    print(f"  socket {client.sock_path}; exits after {status['idle_s']:g}s without a client"
          f" (idle for {status['idle_for_s']:.0f}s)")
    if status["running"]:
        print(f"  running {status['running']['pipeline']}")
    if status.get("fork_server"):
        fs = status["fork_server"]
        print(f"  fork server pid {fs['pid']}: {fs['forked']} workers forked warm from it")
    for rt in status["runtimes"]:
        print(f"  runtime: transport {rt['transport']}, {rt['workers']} workers "
              f"(pids {', '.join(map(str, rt['worker_pids']))}), "
              f"{rt['cache_entries']} cached decodes ({fmt_bytes(rt['cache_bytes'])}"
              f"{_on_disk(rt.get('cache_disk_bytes', 0))}), {fmt_bytes(rt['held_bytes'])} held")
    return 0


def _on_disk(nbytes: int) -> str:
    from .pipeline import fmt_bytes

    return f", {fmt_bytes(nbytes)} of it on disk" if nbytes else ""


def _compare(reports, machine=None) -> str:
    """The runs side by side; ``reports``: (transport, attempt, label, RunReport);
    ``machine``: {(transport, attempt): the machine's peak memory growth during that run}."""
    from .pipeline import fmt_bytes

    machine = machine or {}
    lines = [f"{'run':<28}{'time':>9}{'edge bytes':>12}{'zero-copy':>11}{'copied':>11}"
             f"{'peak held':>11}{'pinned':>11}{'machine':>11}"]
    for transport, attempt, label, r in reports:
        if r.status != "done":  # a failed run's figures measure nothing
            lines.append(f"{label:<28}{'FAILED':>9}  {r.error or ''}")
            continue
        used = machine.get((transport, attempt))
        lines.append(f"{label:<28}{r.wall_s:>8.2f}s{fmt_bytes(r.edge_bytes):>12}"
                     f"{r.zero_copy_rate:>10.1%}{fmt_bytes(r.bytes_copied):>11}"
                     f"{fmt_bytes(r.peak_held):>11}{fmt_bytes(r.peak_pinned):>11}"
                     f"{fmt_bytes(used) if used is not None else '-':>11}")
    lines += _ratios(reports, machine)
    if machine:
        lines += ["", "peak held / pinned: shared memory behind intermediates and cached decodes (the copy",
                  "transport's workers' private heaps are not in it); machine: the peak growth of every",
                  "process's private and shared memory on this machine from before the runtime started,",
                  "what the memory comparison above uses (other programs' memory shows in it too)."]
    return "\n".join(lines)


def _ratios(reports, machine=None) -> list:
    """zerrow against copy, first run against first run and second against second."""
    by = {(t, a): r for t, a, _, r in reports if r.status == "done"}
    machine = machine or {}
    out = []
    for attempt, what in (("cold", "first run (cold workers, empty cache)"),
                          ("warm", "second run (warm workers and cache)")):
        z, c = by.get(("zerrow", attempt)), by.get(("copy", attempt))
        if z is None or c is None or not z.wall_s:
            continue
        zm, cm = machine.get(("zerrow", attempt)), machine.get(("copy", attempt))
        memory = (f"{zm / max(1, cm):.2f}x the machine's memory at peak" if zm is not None and cm is not None
                  else f"{z.peak_held / max(1, c.peak_held):.2f}x the peak shared memory held "
                       f"({z.peak_pinned / max(1, c.peak_pinned):.2f}x pinned by the run)")
        out.append(f"zerrow vs copy, {what}: {c.wall_s / z.wall_s:.1f}x as fast, {memory}")
    return [""] + out if out else []


def _shared_vs_copied(rep) -> str:
    from .pipeline import fmt_bytes

    out = []
    for n in rep.nodes:
        if n.status != "done":
            continue
        how = ("shared zero-copy" if n.bytes_copied == 0 else
               f"{fmt_bytes(n.bytes_copied)} copied (buffers not in the zerrow pool)")
        out.append(f"  {n.name:<16} {fmt_bytes(n.bytes):>10}  {how}")
    return "\n".join(out)


def cmd_demo(args) -> int:
    from . import demo_data
    from . import pipeline as zp
    from .pipeline import zerrow_api
    from .pipeline.machine_memory import PeakSampler, machine_memory

    rows = args.rows or demo_data.DEFAULT_ROWS
    directory = demo_data.dataset_dir(rows, args.compression)
    if not demo_data.is_complete(directory):
        print(f"generating {rows:,} synthetic taxi trips into {directory} ...", flush=True)
        t = time.monotonic()
        demo_data.generate(rows, directory, compression=args.compression,
                           progress=lambda i, n: print(f"  wrote file {i}/{n}", flush=True))
        print(f"  done in {time.monotonic() - t:.1f}s", flush=True)
    else:
        print(f"using the dataset in {directory}", flush=True)
    os.environ["ZERROW_DEMO_DIR"] = directory
    names = {"movement": ["taxi_movement"], "zones": ["taxi_zones"],
             "both": ["taxi_movement", "taxi_zones"]}[args.pipeline]
    transports = ["copy"]
    if zerrow_api.available():
        transports.append("zerrow")
    else:
        print("note: the zerrow transport is unavailable (" + ", ".join(zerrow_api.missing())
              + " missing); showing the copy baseline only", flush=True)
    status = 0
    for name in names:
        pipe = importlib.import_module(f"zerrow_pool.pipeline.demos.{name}").build()
        reports, machine = [], {}
        for transport in transports:
            before = machine_memory()  # no runtime of this transport exists yet
            with zp.Runtime(workers=args.workers, transport=transport,
                            on_event=None if args.quiet else _progress_printer()) as rt:
                for attempt in ("cold", "warm"):
                    print(f"\n== {name}: transport={transport} ({attempt}) ==", flush=True)
                    with PeakSampler() as sampler:
                        res = rt.run(pipe, outputs=(), raise_on_error=False)
                    machine[(transport, attempt)] = max(0, sampler.peak - before)
                    label = f"{transport} ({attempt}{' cache' if rt.cache_enabled and attempt == 'warm' else ''})"
                    reports.append((transport, attempt, label, res.report))
                    status |= 0 if res.ok else 1
                    if not res.ok:
                        print(f"run FAILED: {res.report.error}", flush=True)
        print(f"\n==== {name}: per-node report, last run ====")
        print(reports[-1][-1].format())
        print(f"\n==== {name}: comparison ====")
        print(_compare(reports, machine))
        zr = [r for transport, _, _, r in reports if transport == "zerrow"]
        if zr:
            print("\nwhat the zerrow transport shared and copied (warm run):")
            print(_shared_vs_copied(zr[-1]))
    return status


RUN_DESCRIPTION = """\
Run the pipeline defined in a Python file and print its report.

A pipeline file defines nodes: functions whose parameter names are the names
of their upstream nodes, decorated with @zp.node, plus Parquet sources:

    import pyarrow.compute as pc
    from zerrow_pool import pipeline as zp

    trips = zp.parquet("trips", "data/trips/", columns=["fare", "tip"])

    @zp.node
    def tipped(trips):                       # receives a pyarrow.Table
        return trips.filter(pc.field("tip") > 0)

    @zp.node(inputs_as="polars")             # or annotate: trips: pl.DataFrame
    def per_fare(tipped):
        return tipped.group_by("fare").len() # any Arrow-exportable frame

Every node and source at module level is part of the pipeline (or define
`pipeline = zp.Pipeline(name, [...])`). The file is imported again in each
worker process, so do no work at import time.
"""

RUN_EPILOG = f"""\
sizes: {SIZE_HELP}.
files: the copy transport writes to a private directory under /dev/shm (set
ZERROW_COPY_DIR to move it; in Docker raise --shm-size); spills go under
ZERROW_SPILL_DIR or the temp directory.
exit status: 0 done, 1 a node failed, 2 bad arguments or pipeline file,
130 interrupted, 143 terminated (SIGTERM: the run is cancelled; with --no-service
its workers are killed and its files removed).
"""


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zerrow", description="zero-copy Arrow pipelines")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a pipeline file", description=RUN_DESCRIPTION,
                       epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("pipeline", help="Python file defining nodes (or a `pipeline`)")
    r.add_argument("--workers", type=int, default=None,
                   help="worker processes, at least 1 (default: CPUs)")
    r.add_argument("--memory-budget", default=None, metavar="SIZE",
                   help="memory the runtime may hold, at least 1M, e.g. 800M or 4G "
                        "(binary units; default: unlimited)")
    r.add_argument("--transport", choices=["zerrow", "copy"], default="zerrow")
    r.add_argument("--no-cache", action="store_true", help="disable the Parquet decode cache")
    r.add_argument("--strict-budget", action="store_true",
                   help="also stop a node whose worker allocates more than its share of the budget")
    r.add_argument("--node-memory-limit", default=None, metavar="SIZE",
                   help="the most memory one node may hold, e.g. 1G (a node's own "
                        "@node(memory_limit=) wins); enforced by a memory cgroup where possible")
    r.add_argument("--isolation", choices=["process", "none"], default="process",
                   help="process (default): each pipeline's nodes run in sandboxes of their own, "
                        "forked from a warm zygote; none: warm workers run every node (for "
                        "measuring; see docs/SANDBOX.md)")
    r.add_argument("--output", action="append", metavar="NODE=PATH",
                   help="write NODE's result to PATH: Parquet (.parquet/.pq) or Arrow IPC "
                        "(.arrow/.feather/.ipc); repeatable")
    r.add_argument("--show", action="append", metavar="NODE",
                   help="print the first rows of NODE's result; repeatable")
    r.add_argument("--show-rows", type=int, default=10, metavar="N",
                   help="rows --show prints (default 10)")
    r.add_argument("--json", help="also write the report as JSON to this file")
    r.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    r.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run on a Ray cluster: 'auto' (the running one), 'local' (start one "
                        "here) or its address; one zerrow agent per Ray node, zero-copy within "
                        "a machine (needs pip install 'zerrow-pool[ray]')")
    r.add_argument("--no-service", action="store_true",
                   help="run in this process instead of the long-lived zerrow service "
                        "(which keeps workers, memory and decoded inputs warm between runs)")
    r.set_defaults(fn=cmd_run)
    sv = sub.add_parser("service", help="the long-lived runtime service behind `zerrow run`",
                        description="`zerrow run` starts the service on first use (one per "
                        "user; socket in $ZERROW_SERVICE_DIR, else $XDG_RUNTIME_DIR/zerrow, "
                        "else /tmp/zerrow-UID); it exits after ZERROW_SERVICE_IDLE seconds "
                        "(default 600) without a client.")
    sv.add_argument("action", choices=["status", "stop"])
    sv.add_argument("--json", action="store_true", help="status as JSON")
    sv.set_defaults(fn=cmd_service)
    d = sub.add_parser("demo", help="generate the synthetic dataset and compare transports")
    d.add_argument("--rows", type=_positive_int, default=None,
                   help="trips to generate (default 28M: ~0.7 GB of snappy Parquet, "
                        "~2.2 GB decoded)")
    d.add_argument("--compression", default="snappy", choices=["snappy", "zstd", "none"],
                   help="Parquet compression of the generated files")
    d.add_argument("--workers", type=_positive_int, default=2)
    d.add_argument("--pipeline", choices=["movement", "zones", "both"], default="both")
    d.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    d.set_defaults(fn=cmd_demo)
    from . import doctor

    doctor.add_arguments(sub.add_parser("doctor", help="what this machine gives zerrow, and which setting would make it faster"))
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
