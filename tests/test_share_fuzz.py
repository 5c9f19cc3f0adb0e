"""The SIPC regression corpus (tests/share_corpus/*.json) and a hypothesis fuzzer
of attach(), both run in a subprocess so that a crash is a test failure that
names its input instead of the end of pytest."""

import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "share_corpus")
sys.path.insert(0, CORPUS)

import sipc_corpus  # noqa: E402

REPLAY = r"""
import json, os, sys, traceback
sys.path.insert(0, sys.argv[1])
import sipc_corpus as corpus
results = []
for name in sorted(os.listdir(sys.argv[1])):
    if not name.endswith(".json"):
        continue
    print(name, file=sys.stderr, flush=True)   # the last name printed names a crash
    with open(os.path.join(sys.argv[1], name)) as f:
        entry = json.load(f)
    if entry.get("known_crash") and len(sys.argv) < 3:
        continue   # replayed one by one (test_known_crash)
    if len(sys.argv) > 2 and name != sys.argv[2]:
        continue
    before = len(os.listdir("/proc/self/fd"))
    try:
        full, light = corpus.replay(entry)
        err = None
    except AssertionError as e:
        full = light = None
        err = str(e)
    except Exception:
        full = light = None
        err = traceback.format_exc()
    after = len(os.listdir("/proc/self/fd"))
    results.append({"file": name, "full": full, "light": light, "error": err, "fd_delta": after - before})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def corpus_results():
    p = subprocess.run([sys.executable, "-c", REPLAY, CORPUS], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        last = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "?"
        pytest.fail(f"replaying the corpus crashed ({p.returncode}) at {last}:\n{p.stderr[-3000:]}")
    return {r["file"]: r for r in json.loads(p.stdout.strip().splitlines()[-1])}


def _load(name):
    with open(os.path.join(CORPUS, name)) as f:
        return json.load(f)


ENTRIES = sorted(n for n in os.listdir(CORPUS) if n.endswith(".json") and not _load(n).get("known_crash"))
KNOWN_CRASHES = sorted(n for n in os.listdir(CORPUS) if n.endswith(".json") and _load(n).get("known_crash"))


def test_corpus_is_there():
    assert sum(n.startswith("base_") for n in ENTRIES) >= 8
    assert sum(n.startswith("bad_") for n in ENTRIES) >= 50


@pytest.mark.parametrize("name", ENTRIES)
def test_corpus_entry(corpus_results, name):
    r = corpus_results[name]
    assert r["error"] is None, r["error"]
    assert r["fd_delta"] == 0, "an attach that failed (or succeeded and was dropped) leaked fds"
    with open(os.path.join(CORPUS, name)) as f:
        entry = json.load(f)
    if entry["expect"] == "error":
        # the message names the problem, and both validation levels refuse
        assert entry["match"].lower() in r["full"].lower(), (r["full"], entry["why"])


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(
    strict=False, reason=_load(n)["known_crash"])) for n in KNOWN_CRASHES])
def test_known_crash(name):
    """Inputs that crashed the consumer; each must end in a ShareError naming the problem."""
    p = subprocess.run([sys.executable, "-c", REPLAY, CORPUS, name], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"the consumer died ({p.returncode}): {p.stderr[-600:]}"
    (r,) = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["error"] is None, r["error"]
    assert _load(name)["match"].lower() in r["full"].lower()


def _run_fuzzer(tmp_path, args):
    """Runs fuzz_sipc.py; its summary, or a test failure naming the saved input."""
    p = subprocess.run([sys.executable, os.path.join(CORPUS, "fuzz_sipc.py"), "--out", str(tmp_path)] + args,
                       capture_output=True, text=True, timeout=600)
    if p.returncode == 0:
        return json.loads(p.stdout.strip().splitlines()[-1])
    saved = None
    for name in ("failure.json", "current.json"):
        path = tmp_path / name
        if path.exists():
            saved = path
            break
    if saved and os.environ.get("ZERROW_FUZZ_SAVE"):
        with open(saved) as f:
            entry = json.load(f)
        shutil.copy(saved, os.path.join(CORPUS, f"{entry['name']}.json"))
    pytest.fail(f"the fuzzer failed ({p.returncode}); input saved at {saved}\n{p.stderr[-3000:]}")


@pytest.mark.parametrize("tight", [False, True], ids=["sparse_segments", "tight_segments"])
def test_fuzz_attach(tmp_path, tight):
    """2000 mutated descriptors (about 8 s each way); ZERROW_FUZZ_EXAMPLES for more.
    tight: segment images cut to their last referenced page, so that reads past
    the data fault instead of finding zeros. A crashing or misbehaving input is
    saved and named in the failure (copied into tests/share_corpus/ with
    ZERROW_FUZZ_SAVE=1)."""
    n = int(os.environ.get("ZERROW_FUZZ_EXAMPLES", "2000"))
    seed = os.environ.get("ZERROW_FUZZ_SEED", "20261125")  # "random" for a fresh run
    args = ["--examples", str(n)] + ([] if seed == "random" else ["--seed", seed]) + (["--tight"] if tight else [])
    summary = _run_fuzzer(tmp_path, args)
    skipped = summary["outcomes"].get("skipped: known crash", 0)
    assert summary["examples"] + skipped == n
    assert summary["outcomes"].get("ok", 0) > 0, "some mutations must still attach"
    assert len(summary["outcomes"]) > 20, "mutations must reach many different checks"


def test_sweep_node_fields(tmp_path):
    """Every node of every base with boundary offsets, lengths and null counts, on
    tight segments (about 600 descriptors)."""
    summary = _run_fuzzer(tmp_path, ["--sweep", "--tight"])
    assert summary["examples"] > 500


# -- differential: docs/SHARED_IPC.md's parsing rules (the Python reader) == the C++ Parse()

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import zerrow_pool as z  # noqa: E402
from test_share_common import SipcError, parse_sipc  # noqa: E402

_BASE_DESCRIPTORS = [sipc_corpus.unb64(e["descriptor"]) for e in sipc_corpus.load_all(CORPUS)
                     if e["name"].startswith("base_")]


def _cpp_parses(data):
    try:
        z._core.describe_raw(data)  # sipc::Parse and nothing else
        return True
    except z.ShareError:
        return False


def _py_parses(data):
    try:
        parse_sipc(data, strict=True)
        return True
    except SipcError:
        return False


@st.composite
def _mutants(draw):
    data = bytearray(draw(st.sampled_from(_BASE_DESCRIPTORS)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "byte", "truncate", "int"]))
        if not data:
            break
        pos = draw(st.sampled_from(range(len(data))))  # uniform, unlike integers()
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 0x40, 0x7F, 0x80, 0xFE, 0xFF]))
        elif kind == "truncate":
            del data[pos:]
        else:
            width = draw(st.sampled_from([2, 4, 8]))
            value = draw(st.sampled_from([0, 1, (1 << (8 * width - 1)) - 1, 1 << (8 * width - 1),
                                          (1 << (8 * width)) - 1, 4096, 4097, 64, 65]))
            data[pos:pos + width] = value.to_bytes(width, "little")[:max(0, len(data) - pos)]
    return bytes(data)


@settings(max_examples=1500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_mutants())
def test_documented_parse_rules_match_the_reader(data):
    assert _cpp_parses(data) == _py_parses(data)


def test_documented_parse_rules_accept_every_base():
    for d in _BASE_DESCRIPTORS:
        assert _cpp_parses(d) and _py_parses(d)
