"""De-anonymizing vs copying into a memfd, measured inside a VM per kernel.

    python bench/bench_kmod.py [MIB ...]      # default: 64 256

Boots each usable Debian kernel under qemu (TCG) with the module and runs the
in-guest benchmark (kmod/vm/ztest.c), which times both paths in the same run
and reports their ratio; absolute times under TCG mean nothing. Results go to
bench/RESULTS.md, "Kernel module".
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kmod" / "vm"))
import vmtest  # noqa: E402


def main(sizes):
    missing = vmtest.missing_tools()
    if missing:
        sys.exit("missing: " + ", ".join(f"{t} (apt-get install {p})" for t, p in missing))
    for kernel in vmtest.find_kernels():
        res = vmtest.run_vm(kernel, "bench", args=sizes, timeout=900)
        if not res.done or res.failed:
            print(f"{kernel.version}: benchmark did not complete\n{res.output[-2000:]}")
            continue
        for row in res.bench:
            print(f"{kernel.version:24} {row.get('size_mib', '?'):>5} MiB {row.get('pages', '?'):4} "
                  f"copy/de-anonymize = {row.get('ratio', '?')}x")


if __name__ == "__main__":
    main(sys.argv[1:] or ["64", "256"])
