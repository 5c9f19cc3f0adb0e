"""Sharing numpy/Polars/DuckDB memory through the kernel module, and the pool's
reclaim check of shared segments, in a VM per kernel.

Boots each Debian kernel found (see tests/test_kmod_vm.py) with the module
loaded and runs tests/guest/ with this Python over the read-only 9p share.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "kmod" / "vm"))
import vmtest  # noqa: E402

pytestmark = pytest.mark.vm

MISSING = vmtest.missing_tools()
KERNELS = vmtest.find_kernels() if not MISSING else []


@pytest.mark.parametrize("kernel", [pytest.param(k, id=k.short) for k in KERNELS] or [None])
def test_foreign_memory_sharing_in_guest(kernel):
    if MISSING:
        pytest.skip("missing " + ", ".join(f"{t} (apt-get install {p})" for t, p in MISSING))
    if kernel is None:
        pytest.skip("no kernel with /boot/vmlinuz-V, /usr/src/linux-headers-V and /lib/modules/V")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "tests/guest"]
    res = vmtest.run_vm(kernel, "cmd", command=command, cwd=str(REPO), timeout=600)
    assert not res.timed_out, res.output[-4000:]
    assert res.cmd_exit == 0, res.cmd_output[-6000:]
    assert " passed" in res.cmd_output and "skipped" not in res.cmd_output, res.cmd_output[-3000:]
    assert not res.failed, res.summary()
