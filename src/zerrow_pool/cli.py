"""The ``zerrow`` command.

    zerrow run PIPELINE.py [--workers N] [--memory-budget SIZE]
                           [--transport zerrow|copy] [--no-cache] [--json FILE] [--no-service]
    zerrow service status|stop
    zerrow demo [--rows N] [--workers N] [--pipeline movement|zones|both]
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time


def _progress_printer(stream=sys.stderr):
    t0 = time.monotonic()

    def on_event(ev):
        kind, rec = ev["event"], ev.get("record")
        stamp = f"[{time.monotonic() - t0:7.2f}s] {ev['pipeline']}"
        if kind == "start":
            print(f"{stamp} > {ev['node']} started", file=stream, flush=True)
        elif kind == "done":
            from .pipeline import fmt_bytes

            extra = f", {rec.cache_hits} cached chunks" if rec.cache_hits else ""
            print(f"{stamp} + {ev['node']} done in {rec.seconds:.2f}s: {rec.rows:,} rows, "
                  f"{fmt_bytes(rec.bytes)}, copied {fmt_bytes(rec.copied)}{extra}",
                  file=stream, flush=True)
        elif kind == "failed":
            last = (ev.get("error") or "").strip().splitlines()[-1:] or [""]
            print(f"{stamp} ! {ev['node']} FAILED: {last[0]}", file=stream, flush=True)
        elif kind == "skipped":
            print(f"{stamp} - {ev['node']} skipped (an upstream node failed)", file=stream, flush=True)
        elif kind == "retry":
            print(f"{stamp} ~ {ev['node']} retrying after a failure", file=stream, flush=True)
        elif kind == "spill":
            print(f"{stamp} v {ev['node']} spilled to disk to stay within the budget",
                  file=stream, flush=True)
    return on_event


def _runtime_options(args) -> dict:
    return dict(workers=args.workers, transport=args.transport, memory_budget=args.memory_budget,
                cache=not args.no_cache, strict_budget=args.strict_budget)


def cmd_run(args) -> int:
    from . import pipeline as zp

    on_event = None if args.quiet else _progress_printer()
    if args.no_service:
        try:
            pipe = zp.load_pipeline_file(args.pipeline)
            rt = zp.Runtime(**_runtime_options(args), on_event=on_event)
        except (zp.PipelineDefinitionError, zp.ZerrowUnavailable, zp.WorkerStartError,
                FileNotFoundError, ValueError) as e:
            print(f"zerrow run: {e}", file=sys.stderr)
            return 2
        with rt:
            result = rt.run(pipe, outputs=(), raise_on_error=False)
    else:
        from .service import ServiceClient, ServiceDirError, ServiceError
        from .service.client import RunRefused

        def on_wait(running):
            what = f" ({running['pipeline']})" if running else ""
            print(f"zerrow run: the service is busy with another run{what}; waiting",
                  file=sys.stderr, flush=True)

        try:
            result = ServiceClient().run(args.pipeline, runtime=_runtime_options(args),
                                         outputs=(), on_event=on_event, on_wait=on_wait)
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
    for rt in status["runtimes"]:
        print(f"  runtime: transport {rt['transport']}, {rt['workers']} workers "
              f"(pids {', '.join(map(str, rt['worker_pids']))}), "
              f"{rt['cache_entries']} cached decodes ({fmt_bytes(rt['cache_bytes'])}), {fmt_bytes(rt['held_bytes'])} held")
    return 0


def _compare(reports) -> str:
    from .pipeline import fmt_bytes

    lines = [f"{'run':<28}{'time':>9}{'edge bytes':>12}{'zero-copy':>11}{'copied':>11}{'peak held':>11}"]
    copies = [r for label, r in reports if label.startswith("copy")]
    base = copies[-1] if copies else None
    for label, r in reports:
        faster = base and r.wall_s and not label.startswith("copy")
        speed = f"  {base.wall_s / r.wall_s:4.1f}x vs copy (warm)" if faster else ""
        lines.append(f"{label:<28}{r.wall_s:>8.2f}s{fmt_bytes(r.edge_bytes):>12}"
                     f"{r.zero_copy_rate:>10.1%}{fmt_bytes(r.bytes_copied):>11}"
                     f"{fmt_bytes(r.peak_held):>11}{speed}")
    return "\n".join(lines)


def _shared_vs_copied(rep) -> str:
    from .pipeline import fmt_bytes

    out = []
    for n in rep.nodes:
        if n.status != "done":
            continue
        how = ("shared zero-copy" if n.copied == 0 else
               f"{fmt_bytes(n.copied)} copied (buffers not in the zerrow pool)")
        out.append(f"  {n.name:<16} {fmt_bytes(n.bytes):>10}  {how}")
    return "\n".join(out)


def cmd_demo(args) -> int:
    from . import demo_data
    from . import pipeline as zp
    from .pipeline import zerrow_api

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
        reports = []
        for transport in transports:
            with zp.Runtime(workers=args.workers, transport=transport,
                            on_event=None if args.quiet else _progress_printer()) as rt:
                for attempt in ("cold", "warm"):
                    print(f"\n== {name}: transport={transport} ({attempt}) ==", flush=True)
                    res = rt.run(pipe, outputs=(), raise_on_error=False)
                    label = f"{transport} ({attempt}{' cache' if rt.cache_enabled and attempt == 'warm' else ''})"
                    reports.append((label, res.report))
                    status |= 0 if res.ok else 1
        print(f"\n==== {name}: per-node report, last run ====")
        print(reports[-1][1].format())
        print(f"\n==== {name}: comparison ====")
        print(_compare(reports))
        zr = [r for label, r in reports if label.startswith("zerrow")]
        if zr:
            print("\nwhat the zerrow transport shared and copied (warm run):")
            print(_shared_vs_copied(zr[-1]))
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zerrow", description="zero-copy Arrow pipelines")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a pipeline file")
    r.add_argument("pipeline", help="Python file defining nodes (or a `pipeline`)")
    r.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    r.add_argument("--memory-budget", default=None, help="e.g. 4G, 800M (default: unlimited)")
    r.add_argument("--transport", choices=["zerrow", "copy"], default="zerrow")
    r.add_argument("--no-cache", action="store_true", help="disable the Parquet decode cache")
    r.add_argument("--strict-budget", action="store_true",
                   help="also stop a node whose worker allocates more than its share of the budget")
    r.add_argument("--json", help="also write the report as JSON to this file")
    r.add_argument("-q", "--quiet", action="store_true", help="no live progress")
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
    d.add_argument("--rows", type=int, default=None, help="trips to generate (default 28M: ~2 GB of Parquet, 2.2 GB decoded)")
    d.add_argument("--compression", default="snappy", choices=["snappy", "zstd", "none"],
                   help="Parquet compression of the generated files")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--pipeline", choices=["movement", "zones", "both"], default="both")
    d.add_argument("-q", "--quiet", action="store_true", help="no live progress")
    d.set_defaults(fn=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
