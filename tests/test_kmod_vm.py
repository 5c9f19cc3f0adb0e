"""The zerrow kernel module, tested in real kernels booted under qemu (TCG).

Each kernel found with /boot/vmlinuz-V, /usr/src/linux-headers-V and
/lib/modules/V (Debian 12: 6.1 and 6.12) is booted once per session with the
module and the in-guest tests (kmod/vm/ztest.c, kmod/vm/kmod_client_test.cc);
every guest test is reported as its own pytest test.  A second boot runs a
host command in the guest through kmod/vm/run_in_vm.py's machinery.

Needs: qemu-system-x86 busybox-static gcc g++ make libc6-dev
linux-image-amd64 linux-headers-amd64 (and the 6.12 image + headers).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "kmod" / "vm"))
import vmtest  # noqa: E402

pytestmark = pytest.mark.vm

MISSING = vmtest.missing_tools()
KERNELS = vmtest.find_kernels() if not MISSING else []


def _skip_reason() -> str | None:
    if MISSING:
        return "missing " + ", ".join(f"{tool} (apt-get install {pkg})" for tool, pkg in MISSING)
    if not KERNELS:
        return ("no kernel with /boot/vmlinuz-V, /usr/src/linux-headers-V and /lib/modules/V "
                "(apt-get install linux-image-amd64 linux-headers-amd64)")
    return None


def _guest_test_names() -> list[str]:
    src = (REPO / "kmod/vm/ztest.c").read_text()
    names = re.findall(r'^\s*\{ "(\w+)", t_\w+ \},', src, re.M)
    return ["insmod"] + names + ["kmod_client", "rmmod", "dmesg_clean"]


KERNEL_PARAMS = [pytest.param(k, id=k.short) for k in KERNELS] or [
    pytest.param(None, id="no-kernel")]
_results: dict[str, vmtest.VMResult] = {}


def _kernel_or_skip(kernel):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    return kernel


def _guest_results(kernel) -> vmtest.VMResult:
    if kernel.version not in _results:
        _results[kernel.version] = vmtest.run_vm(kernel, "tests", timeout=300)
    return _results[kernel.version]


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_module_builds_without_warnings(kernel):
    kernel = _kernel_or_skip(kernel)
    with vmtest.build_lock():
        ko = vmtest.build_module(kernel)  # raises on any compiler warning
    assert ko.exists()


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_guest_boot_completes(kernel):
    kernel = _kernel_or_skip(kernel)
    res = _guest_results(kernel)
    assert not res.timed_out, f"VM timed out after {res.elapsed:.0f}s:\n{res.output[-3000:]}"
    assert res.done, f"VM did not reach the end sentinel:\n{res.output[-3000:]}"


@pytest.mark.parametrize("name", _guest_test_names())
@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_guest(kernel, name):
    kernel = _kernel_or_skip(kernel)
    res = _guest_results(kernel)
    if name in res.skipped:
        pytest.skip(f"{name} skipped in {kernel.version}: {res.skipped[name]}")
    if name in res.failed:
        info = "\n".join(line for line in res.output.splitlines() if "ZTEST INFO" in line)
        pytest.fail(f"{name} failed in {kernel.version}: {res.failed[name]}\n{info}")
    assert name in res.passed, (
        f"{name} did not report in {kernel.version} (done={res.done}, "
        f"timed_out={res.timed_out}):\n{res.output[-3000:]}")


def _cmd_params():
    """One command boot per kernel: read-only root on the oldest, overlay on the newest."""
    if not KERNELS:
        return [pytest.param(None, False, id="no-kernel")]
    params = [pytest.param(KERNELS[0], False, id=f"{KERNELS[0].short}-ro")]
    params.append(pytest.param(KERNELS[-1], True, id=f"{KERNELS[-1].short}-overlay"))
    return params


@pytest.mark.parametrize("kernel,writable", _cmd_params())
def test_host_command_runs_in_guest(kernel, writable):
    """run_in_vm's cmd mode: host Python over 9p sees /dev/zerrow; exit code comes back."""
    kernel = _kernel_or_skip(kernel)
    code = ("import os, sys; print('guest', os.uname().release); "
            "fd = os.open('/dev/zerrow', os.O_RDWR); os.close(fd); "
            "p = os.path.join(os.getcwd(), '.zerrow-vm-write-probe')\n"
            "try:\n open(p, 'w').write('x'); print('write ok')\n"
            "except OSError as e:\n print('write failed', e.errno)\n"
            "sys.exit(7)")
    res = vmtest.run_vm(kernel, "cmd", command=[sys.executable, "-c", code], cwd=str(REPO),
                        timeout=300, writable=writable)
    assert not res.timed_out, res.output[-3000:]
    assert res.cmd_exit == 7, res.output[-3000:]
    assert f"guest {kernel.version}" in res.cmd_output
    # The guest's /tmp is a throw-away overlay of the host's, so a checkout there is writable too.
    under_tmp = REPO.is_relative_to("/tmp")
    assert ("write ok" if writable or under_tmp else "write failed 30") in res.cmd_output, res.cmd_output
    assert not (REPO / ".zerrow-vm-write-probe").exists()  # the overlay never reaches the host
    assert not res.failed, res.summary()
