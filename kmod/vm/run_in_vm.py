#!/usr/bin/env python3
"""Boot a test kernel with the zerrow module loaded and run something in it.

  kmod/vm/run_in_vm.py --kernel 6.1 --tests                 # in-guest C tests
  kmod/vm/run_in_vm.py --kernel 6.12 --tests basic_share    # some of them
  kmod/vm/run_in_vm.py --kernel 6.1 --bench 64 256          # benchmark
  kmod/vm/run_in_vm.py --kernel 6.1 -- python3 -m pytest -p no:cacheprovider tests/x.py
  kmod/vm/run_in_vm.py --list                               # usable kernels

A command runs chrooted in the host's / (shared read-only over 9p) in the
current directory, with /dev/zerrow present, a fresh /tmp, /dev/shm and /run,
and the host's PATH with this Python's bin directory first.  The exit status
of run_in_vm.py is the command's (or 1 if a test failed, 124 on timeout).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmtest  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", help="kernel version or prefix (6.1, 6.12, 6.1.0-56-amd64); default oldest")
    ap.add_argument("--list", action="store_true", help="list usable kernels and exit")
    ap.add_argument("--tests", nargs="*", metavar="NAME", help="run the in-guest tests (all if no name)")
    ap.add_argument("--bench", nargs="*", metavar="MIB", help="run the benchmark (default 64 256)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before qemu is killed")
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--quiet", action="store_true", help="do not echo the serial console")
    ap.add_argument("--writable", action="store_true",
                    help="command mode: put a tmpfs overlay on the host root so it can write "
                         "anywhere (changes are discarded at poweroff)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- command to run in the guest")
    args = ap.parse_args(argv)

    missing = vmtest.missing_tools()
    if missing:
        print("missing: " + ", ".join(f"{t} (apt-get install {p})" for t, p in missing), file=sys.stderr)
        return 2
    if args.list:
        for k in vmtest.find_kernels():
            print(f"{k.short:6} {k.version:28} {k.vmlinuz} {k.headers}")
        return 0
    kernel = vmtest.select_kernel(args.kernel)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        mode, extra = "cmd", None
        timeout = args.timeout or 900
    elif args.bench is not None:
        mode, extra = "bench", args.bench or ["64", "256"]
        timeout = args.timeout or 900
    else:
        mode, extra = "tests", args.tests or None
        timeout = args.timeout or 300
    res = vmtest.run_vm(kernel, mode, args=extra, command=command or None, cwd=os.getcwd(),
                        timeout=timeout, memory=args.memory, echo=not args.quiet,
                        writable=args.writable)
    if args.quiet:
        if mode == "cmd":
            print(res.cmd_output)
        for line in res.output.replace("\r", "").splitlines():
            if line.startswith(("ZBENCH", "ZTEST FAIL", "ZTEST INFO")):
                print(line)
    print(res.summary(), file=sys.stderr)
    if res.timed_out:
        return 124
    if mode == "cmd":
        if res.cmd_exit is None:
            return 125
        return res.cmd_exit if not res.failed else (res.cmd_exit or 1)
    return 0 if (res.done and not res.failed) else 1


if __name__ == "__main__":
    sys.exit(main())
