"""``zerrow doctor`` reports this machine's real settings and exits 0."""

import json
import os
import re
import subprocess
import sys

SHMEM = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"


def _doctor(*args):
    return subprocess.run([sys.executable, "-m", "zerrow_pool.cli", "doctor", *args],
                          capture_output=True, text=True, timeout=120)


def _selected(path):
    with open(path) as f:
        return re.search(r"\[([^\]]+)\]", f.read()).group(1)


def test_doctor_prints_the_real_settings_and_measures():
    proc = _doctor()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    if os.path.exists(SHMEM):
        assert re.search(rf"^shmem_enabled\s+{re.escape(_selected(SHMEM))}$", out, re.M), out
    assert re.search(r"^memfd\s+yes$", out, re.M), out
    assert "CPU time to write 1 GiB" in out
    assert re.search(r"fresh memfd, faulted page by page\s+\d+\.\d+ s", out), out
    assert "what would make zerrow faster here" in out or "nothing to change" in out


def test_doctor_json_matches_the_kernel():
    proc = _doctor("--json", "--no-measure")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    if os.path.exists(SHMEM):
        assert d["shmem_thp"]["shmem_enabled"] == _selected(SHMEM)
    for name, value in d["shmem_thp"]["per_size"].items():
        assert value == _selected(f"/sys/kernel/mm/transparent_hugepage/hugepages-{name}/shmem_enabled")
    with open("/proc/meminfo") as f:
        free = int(re.search(r"^HugePages_Free:\s+(\d+)", f.read(), re.M).group(1))
    assert d["hugetlb"]["free_pages"] == free
    with open("/proc/sys/fs/leases-enable") as f:
        assert d["write_leases"]["enabled"] == (f.read().strip() != "0")
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())
    assert d["populate_write"] == ((major, minor) >= (5, 14))
    assert d["cost_s_per_gib"] == {}
    assert isinstance(d["advice"], list)


def test_doctor_rejects_unknown_options():
    proc = _doctor("--bogus")
    assert proc.returncode == 2
    assert "unrecognized arguments: --bogus" in proc.stderr
