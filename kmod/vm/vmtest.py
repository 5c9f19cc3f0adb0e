"""Boot a Debian kernel under qemu (TCG) to test the zerrow kernel module.

The host kernel cannot load modules, so every test boots one: the module is
built out-of-tree against /usr/src/linux-headers-<ver>, packed with a busybox
/init, the static test binaries and the 9p modules into an initramfs, and the
kernel /boot/vmlinuz-<ver> is booted with it.  The guest reports over the
serial console with lines

    ZTEST PASS name | ZTEST FAIL name: reason | ZTEST INFO ... | ZBENCH ...
    ZCMD EXIT rc    (cmd mode)   ZVM DONE (sentinel, then poweroff)

Build products are cached in kmod/build/ (gitignored) and rebuilt only when
their inputs change.  Used by tests/test_kmod_vm.py and kmod/vm/run_in_vm.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import io
try:
    import lzma
except ImportError:  # pragma: no cover
    lzma = None
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VM_DIR = Path(__file__).resolve().parent
KMOD_DIR = VM_DIR.parent
REPO = KMOD_DIR.parent
BUILD = Path(os.environ.get("ZERROW_KMOD_BUILD", KMOD_DIR / "build"))

# modules the guest needs to mount the host root over virtio 9p
NINEP_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"]

# tool -> Debian package that provides it
PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox (static)": "busybox-static",
    "gcc": "gcc",
    "g++": "g++",
    "make": "make",
    "static libc (libc.a)": "libc6-dev",
}


@dataclasses.dataclass
class Kernel:
    version: str
    vmlinuz: Path
    headers: Path
    moddir: Path

    @property
    def short(self) -> str:
        """'6.1' or '6.12'."""
        m = re.match(r"(\d+)\.(\d+)", self.version)
        return f"{m.group(1)}.{m.group(2)}" if m else self.version

    @property
    def build_dir(self) -> Path:
        return BUILD / self.version


@dataclasses.dataclass
class VMResult:
    kernel: str
    output: str
    returncode: int | None
    timed_out: bool
    elapsed: float
    passed: list[str]
    failed: dict[str, str]
    skipped: dict[str, str]
    done: bool
    cmd_exit: int | None
    bench: list[dict[str, str]]

    @property
    def cmd_output(self) -> str:
        """What the command printed in cmd mode (between ZCMD START and ZCMD EXIT)."""
        lines = self.output.replace("\r", "").splitlines()
        out, inside = [], False
        for line in lines:
            if line.startswith("ZCMD START"):
                inside = True
            elif line.startswith("ZCMD EXIT"):
                inside = False
            elif inside:
                out.append(line)
        return "\n".join(out)

    def summary(self) -> str:
        lines = [f"kernel {self.kernel}: {len(self.passed)} passed, {len(self.failed)} failed, "
                 f"{len(self.skipped)} skipped, "
                 f"done={self.done} timed_out={self.timed_out} {self.elapsed:.1f}s"]
        for name, why in self.failed.items():
            lines.append(f"  FAIL {name}: {why}")
        return "\n".join(lines)


def _is_static_elf(path: str) -> bool:
    """True if the ELF file has no PT_INTERP program header."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return False
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    import struct
    phoff = struct.unpack_from("<Q", data, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            break
        if struct.unpack_from("<I", data, off)[0] == 3:  # PT_INTERP
            return False
    return True


def busybox_path() -> str | None:
    for cand in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(cand) and _is_static_elf(cand):
            return cand
    return None


def missing_tools() -> list[tuple[str, str]]:
    """(tool, debian package) pairs that are not available."""
    missing = []
    if not shutil.which("qemu-system-x86_64"):
        missing.append(("qemu-system-x86_64", PACKAGES["qemu-system-x86_64"]))
    if not busybox_path():
        missing.append(("busybox (static)", PACKAGES["busybox (static)"]))
    for tool in ("gcc", "g++", "make"):
        if not shutil.which(tool):
            missing.append((tool, PACKAGES[tool]))
    if shutil.which("gcc"):
        libc = subprocess.run(["gcc", "-print-file-name=libc.a"], capture_output=True, text=True)
        if not os.path.isabs(libc.stdout.strip()):
            missing.append(("static libc (libc.a)", PACKAGES["static libc (libc.a)"]))
    return missing


def find_kernels() -> list[Kernel]:
    """Kernels with an image, headers and modules installed, oldest first."""
    found = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        ver = vmlinuz.name[len("vmlinuz-"):]
        moddir = Path("/lib/modules") / ver
        headers = Path("/usr/src") / f"linux-headers-{ver}"
        if not headers.is_dir():
            headers = moddir / "build"
        if moddir.is_dir() and (headers / "Makefile").exists() and (moddir / "modules.dep").exists():
            found.append(Kernel(ver, vmlinuz, headers.resolve(), moddir))

    def key(k: Kernel):
        return [int(x) if x.isdigit() else 0 for x in re.split(r"[.+-]", k.version)]
    return sorted(found, key=key)


def select_kernel(name: str | None) -> Kernel:
    kernels = find_kernels()
    if not kernels:
        raise RuntimeError("no kernel with /boot/vmlinuz-V, /usr/src/linux-headers-V and "
                           "/lib/modules/V found (apt-get install linux-image-amd64 linux-headers-amd64)")
    if not name:
        return kernels[0]
    for k in kernels:
        if k.version == name or k.short == name:
            return k
    for k in kernels:
        if k.version.startswith(name):
            return k
    raise RuntimeError(f"kernel {name!r} not found; have {[k.version for k in kernels]}")


def _newer(target: Path, inputs: list[Path]) -> bool:
    """True if target exists and is newer than every input."""
    if not target.exists():
        return False
    t = target.stat().st_mtime
    return all(p.stat().st_mtime <= t for p in inputs)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise RuntimeError(f"command failed ({res.returncode}): {shlex.join(cmd)}\n"
                           f"{res.stdout[-4000:]}\n{res.stderr[-4000:]}")
    return res


def build_module(kernel: Kernel) -> Path:
    """Build zerrow.ko for `kernel` (cached); returns its path.  Fails on warnings."""
    out = kernel.build_dir
    res = _run(["make", "-s", "-C", str(KMOD_DIR), f"KVER={kernel.version}", f"KDIR={kernel.headers}",
                f"O_DIR={out}", "JOBS=2"])
    warnings = [ln for ln in (res.stdout + res.stderr).splitlines() if "warning:" in ln]
    if warnings:
        raise RuntimeError("module build warnings:\n" + "\n".join(warnings))
    return out / "zerrow.ko"


def build_ztest() -> Path:
    src = VM_DIR / "ztest.c"
    hdr = KMOD_DIR / "include/uapi/zerrow_kmod.h"
    out = BUILD / "ztest"
    if not _newer(out, [src, hdr]):
        BUILD.mkdir(parents=True, exist_ok=True)
        _run(["gcc", "-static", "-pthread", "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
              "-o", str(out), str(src)])
    return out


def build_client_test() -> Path | None:
    """Static build of the kmod_client smoke test (None if csrc/kmod_client.cc is absent)."""
    srcs = [VM_DIR / "kmod_client_test.cc", REPO / "csrc/kmod_client.cc"]
    hdrs = [REPO / "csrc/kmod_client.h", KMOD_DIR / "include/uapi/zerrow_kmod.h"]
    if not all(p.exists() for p in srcs + hdrs):
        return None
    out = BUILD / "kmod_client_test"
    if not _newer(out, srcs + hdrs):
        BUILD.mkdir(parents=True, exist_ok=True)
        _run(["g++", "-static", "-O2", "-std=c++17", "-Wall", "-Wextra", "-Werror",
              f"-I{REPO / 'csrc'}", "-o", str(out)] + [str(s) for s in srcs])
    return out


# ------------------------------------------------------------------ cpio

class Cpio:
    """Minimal writer of the 'newc' cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1
        self.dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        namez = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0))
        self.ino += 1
        self.buf.write(hdr.encode() + namez)
        self.buf.write(b"\0" * (-(110 + len(namez)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def mkdir(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d and d not in self.dirs:
                self.dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        if "/" in path:
            self.mkdir(path.rsplit("/", 1)[0])
        self._entry(path, stat.S_IFREG | mode, data)

    def chardev(self, path: str, major: int, minor: int) -> None:
        path = path.strip("/")
        self.mkdir(path.rsplit("/", 1)[0])
        self._entry(path, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        data = self.buf.getvalue()
        return data + b"\0" * (-len(data) % 512)


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        if lzma is None:  # Python built without liblzma
            return subprocess.run(["xz", "-dc", str(path)], capture_output=True, check=True).stdout
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True).stdout
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def module_load_order(kernel: Kernel, wanted: list[str]) -> list[Path]:
    """Resolve `wanted` module names through modules.dep; deps first.  Built-ins are skipped."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.moddir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod] = rest.split()
        base = os.path.basename(mod).split(".ko")[0]
        by_name[base.replace("-", "_")] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for d in deps.get(mod, []):
            visit(d)
        order.append(mod)
    for name in wanted:
        mod = by_name.get(name.replace("-", "_"))
        if mod:  # absent: built into this kernel
            visit(mod)
    return [kernel.moddir / m for m in order]


@contextlib.contextmanager
def build_lock():
    """Serializes builds of concurrent test sessions sharing kmod/build/."""
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_initramfs(kernel: Kernel) -> Path:
    """Base initramfs for `kernel` (cached): busybox init, zerrow.ko, tests, 9p modules."""
    with build_lock():
        return _build_initramfs(kernel)


def _build_initramfs(kernel: Kernel) -> Path:
    ko = build_module(kernel)
    ztest = build_ztest()
    client = build_client_test()
    out = kernel.build_dir / "initramfs.cpio.gz"
    busybox = busybox_path()
    if busybox is None:
        raise RuntimeError("static busybox not found (apt-get install busybox-static)")
    inputs = [ko, ztest, VM_DIR / "init.sh", Path(__file__), kernel.moddir / "modules.dep"]
    if client:
        inputs.append(client)
    if _newer(out, inputs):
        return out
    c = Cpio()
    for d in ("bin", "sbin", "proc", "sys", "dev", "tmp", "host", "lib/zerrow", "lib/zmods", "root"):
        c.mkdir(d)
    c.chardev("dev/console", 5, 1)
    c.chardev("dev/null", 1, 3)
    c.file("init", (VM_DIR / "init.sh").read_bytes(), 0o755)
    c.file("bin/busybox", Path(busybox).read_bytes(), 0o755)
    c.file("bin/sh", Path(busybox).read_bytes(), 0o755)
    c.file("bin/ztest", ztest.read_bytes(), 0o755)
    if client:
        c.file("bin/kmod_client_test", client.read_bytes(), 0o755)
    c.file("lib/zerrow/zerrow.ko", ko.read_bytes())
    names = []
    for mod in module_load_order(kernel, NINEP_MODULES):
        name = os.path.basename(str(mod)).split(".ko")[0] + ".ko"
        c.file(f"lib/zmods/{name}", _read_module(mod))
        names.append(name)
    c.file("lib/zmods/order", ("\n".join(names) + "\n").encode())
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(gzip.compress(c.finish(), compresslevel=1))
    os.replace(tmp, out)
    return out


def _extra_initramfs(files: dict[str, bytes]) -> bytes:
    c = Cpio()
    for name, data in files.items():
        c.file(name, data, 0o755)
    return gzip.compress(c.finish(), compresslevel=1)


# ------------------------------------------------------------------ boot

_LINE = re.compile(r"^(ZTEST|ZBENCH|ZCMD|ZVM)\b(.*)$")


def parse_output(kernel: str, output: str, returncode: int | None, timed_out: bool,
                 elapsed: float) -> VMResult:
    passed: list[str] = []
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    bench: list[dict[str, str]] = []
    done = False
    cmd_exit = None
    for raw in output.splitlines():
        line = raw.strip("\r")
        m = _LINE.search(line)
        if not m:
            continue
        kind, rest = m.group(1), m.group(2).strip()
        if kind == "ZTEST" and rest.startswith("PASS "):
            passed.append(rest[5:].strip())
        elif kind == "ZTEST" and rest.startswith("FAIL "):
            name, _, why = rest[5:].partition(":")
            failed[name.strip()] = why.strip()
        elif kind == "ZTEST" and rest.startswith("SKIP "):
            name, _, why = rest[5:].partition(":")
            skipped[name.strip()] = why.strip()
        elif kind == "ZBENCH" and "=" in rest:
            bench.append(dict(kv.split("=", 1) for kv in rest.split() if "=" in kv))
        elif kind == "ZCMD" and rest.startswith("EXIT"):
            try:
                cmd_exit = int(rest.split()[1])
            except (IndexError, ValueError):
                cmd_exit = 255
        elif kind == "ZVM" and rest == "DONE":
            done = True
    return VMResult(kernel, output, returncode, timed_out, elapsed, passed, failed, skipped,
                    done, cmd_exit, bench)


def run_vm(kernel: Kernel, mode: str = "tests", args: list[str] | None = None,
           command: list[str] | None = None, cwd: str | None = None, timeout: float = 240,
           memory: str = "2G", smp: int = 2, echo: bool = False,
           extra_env: dict[str, str] | None = None, writable: bool = False) -> VMResult:
    """Boot `kernel` in `mode` ('tests', 'bench' or 'cmd') and collect the results.

    In 'cmd' mode `command` runs in `cwd` chrooted into the host's / (read-only
    9p; with `writable`, behind a tmpfs overlay whose changes are discarded).
    """
    initrd = build_initramfs(kernel)
    extra: dict[str, bytes] = {}
    if args:
        extra["zargs"] = (" ".join(shlex.quote(a) for a in args) + "\n").encode()
    if mode == "cmd":
        if not command:
            raise ValueError("cmd mode needs a command")
        pydir = os.path.dirname(sys.executable)
        env = {"PATH": f"{pydir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": "/tmp",
               "PYTHONDONTWRITEBYTECODE": "1", "ZERROW_IN_VM": "1", "TMPDIR": "/tmp",
               "LANG": "C.UTF-8"}
        env.update(extra_env or {})
        script = ["#!/bin/sh", f"cd {shlex.quote(cwd or os.getcwd())} || exit 254"]
        script += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        script.append(shlex.join(command))
        extra["zcmd.sh"] = ("\n".join(script) + "\n").encode()
    with tempfile.TemporaryDirectory(prefix="zerrow-vm-") as tmp:
        rd = Path(tmp) / "initrd.gz"
        with open(rd, "wb") as f:
            f.write(initrd.read_bytes())
            if extra:
                f.write(_extra_initramfs(extra))
        qemu = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-nographic", "-no-reboot",
                "-m", memory, "-smp", str(smp), "-kernel", str(kernel.vmlinuz), "-initrd", str(rd),
                "-append", f"console=ttyS0 panic=-1 quiet loglevel=4 zmode={mode} "
                           f"zwritable={int(writable)}",
                "-nic", "none"]
        if mode == "cmd":
            qemu += ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
        res = _boot(kernel, qemu, timeout, echo)
        # The guest kernel itself now and then oopses under TCG while it
        # initialises (seen: an int3 in sched_clock_cpu on 6.12), before our
        # init has run or any module is loaded. Such a boot says nothing about
        # the module or the command: boot once more. A failure after "ZVM BOOT"
        # is never retried.
        if not res.timed_out and "ZVM BOOT" not in res.output:
            res = _boot(kernel, qemu, timeout, echo)
        return res


def _boot(kernel: Kernel, qemu: list[str], timeout: float, echo: bool) -> VMResult:
    t0 = time.monotonic()
    proc = subprocess.Popen(qemu, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    chunks: list[bytes] = []
    timed_out = False
    try:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                timed_out = True
                break
            if not sel.select(min(left, 1.0)):
                if proc.poll() is not None:
                    break
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            chunks.append(data)
            if echo:
                sys.stdout.write(data.decode(errors="replace"))
                sys.stdout.flush()
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        proc.stdout.close()
    output = b"".join(chunks).decode(errors="replace")
    elapsed = time.monotonic() - t0
    log = kernel.build_dir / "last-boot.log"
    try:
        log.write_text(output)
    except OSError:
        pass
    return parse_output(kernel.version, output, proc.returncode, timed_out, elapsed)
