"""Fuzzes zerrow_pool.attach() with mutated SIPC descriptors (and fd lists).

    python tests/share_corpus/fuzz_sipc.py --examples 3000 --out DIR [--seed N]

Starts from the real shares in base_*.json, mutates them with hypothesis (bit
flips, truncations, splices of two descriptors, byte insertions/deletions,
integer fields overwritten with boundary values, dropped/duplicated/swapped
fds) and attaches each input with validate_full True (then reads every value)
and False. Each input is written to DIR/current.json before it is tried, so
that if this process crashes the parent (tests/test_share_fuzz.py) can save
it. Any outcome but success or a ShareError is a failure: the input goes to
DIR/failure.json and the process exits 1. On success prints a JSON summary.
"""

import argparse
import collections
import json
import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402

import sipc_corpus as corpus  # noqa: E402
from test_share_common import sipc_fields  # noqa: E402

BOUNDARY = {
    1: [0, 1, 2, 3, 4, 5, 0x7F, 0x80, 0xFF],
    2: [0, 1, 2, 0x7FFF, 0x8000, 0xFFFF],
    4: [0, 1, 2, 3, 63, 64, 253, 254, 4096, 4097, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF],
    8: [0, 1, 7, 8, 63, 64, 4095, 4096, 1 << 20, 1 << 30, 1 << 31, 1 << 32, (1 << 62), (1 << 63) - 1,
        1 << 63, (1 << 64) - 8, (1 << 64) - 1],
}


def tighten(entry):
    """The entry with every segment cut to its last referenced page, so that reads
    past the referenced data fault instead of finding zeros."""
    import copy

    from test_share_common import encode_sipc, parse_sipc

    e = copy.deepcopy(entry)
    d = parse_sipc(corpus.unb64(e["descriptor"]))
    for i, img in enumerate(e["segments"]):
        end = max((off + len(corpus.unb64(data)) for off, data in img["chunks"]), default=0)
        img["size"] = max(4096, (end + 4095) // 4096 * 4096)
        d["segments"][i] = (d["segments"][i][0], img["size"])
    e["descriptor"] = corpus.b64(encode_sipc(d))
    return e


def load_bases(tight=False):
    bases = [e for e in corpus.load_all(HERE) if e["name"].startswith("base_")]
    if tight:
        bases = [tighten(e) for e in bases]
    prepared = []
    for e in bases:
        descriptor, fds, _ = corpus.materialize(e)
        prepared.append({"entry": e, "descriptor": descriptor, "fds": fds, "fields": sipc_fields(descriptor)})
    return prepared


@st.composite
def mutated(draw, bases):
    b = draw(st.sampled_from(range(len(bases))))
    base = bases[b]
    data = bytearray(base["descriptor"])
    fds = list(base["fds"])
    fd_source = [b] * len(fds)
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["field", "field", "field", "flip", "flip", "truncate", "splice", "insert",
                                   "delete", "fds", "field_relative"]))
        if op in ("field", "field_relative"):
            # the header's version is covered by the corpus; spend the cases deeper
            fields = [f for f in base["fields"] if f[0] + f[1] <= len(data) and f[3] != "version"]
            if not fields:
                continue
            off, size, signed, name = draw(st.sampled_from(fields))
            if op == "field":
                value = draw(st.sampled_from(BOUNDARY[size]))
            else:
                old = int.from_bytes(data[off:off + size], "little")
                value = (old + draw(st.sampled_from([-64, -9, -8, -1, 1, 8, 9, 64, 4096]))) % (1 << (8 * size))
            data[off:off + size] = value.to_bytes(size, "little")
            ops.append((op, name, off, value))
        elif op == "flip":
            if not data:
                continue
            lo = 0 if draw(st.integers(0, 99)) < 3 or len(data) <= 6 else 6  # mostly past magic+version
            pos = draw(st.integers(lo, len(data) - 1))
            bit = draw(st.integers(0, 7))
            data[pos] ^= 1 << bit
            ops.append((op, pos, bit))
        elif op == "truncate":
            n = draw(st.integers(0, len(data)))
            del data[n:]
            ops.append((op, n))
        elif op == "splice":
            other = bases[draw(st.sampled_from(range(len(bases))))]["descriptor"]
            i = draw(st.integers(0, len(data)))
            j = draw(st.integers(0, len(other)))
            data = data[:i] + bytearray(other[j:])
            ops.append((op, i, j))
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            blob = draw(st.binary(min_size=1, max_size=40))
            data[i:i] = blob
            ops.append((op, i, len(blob)))
        elif op == "delete":
            if not data:
                continue
            i = draw(st.integers(0, len(data) - 1))
            n = draw(st.integers(1, 40))
            del data[i:i + n]
            ops.append((op, i, n))
        elif op == "fds":
            kind = draw(st.sampled_from(["drop", "dup", "swap"]))
            if kind == "drop" and fds:
                k = draw(st.integers(0, len(fds) - 1))
                del fds[k], fd_source[k]
            elif kind == "dup" and fds:
                k = draw(st.integers(0, len(fds) - 1))
                fds.append(fds[k])
                fd_source.append(fd_source[k])
            elif kind == "swap" and fds:
                ob = draw(st.sampled_from(range(len(bases))))
                if bases[ob]["fds"]:
                    k = draw(st.integers(0, len(fds) - 1))
                    fds[k] = bases[ob]["fds"][0]
                    fd_source[k] = ob
            ops.append((op, kind))
    return bytes(data), fds, fd_source, b, ops


def to_entry(bases, data, fds, fd_source, b, ops, name, why):
    """A self-contained corpus entry for an input (segment images travel with it)."""
    images, order = [], []
    index = {}
    for fd, src in zip(fds, fd_source):
        key = (src, bases[src]["fds"].index(fd))
        if key not in index:
            index[key] = len(images)
            images.append(bases[src]["entry"]["segments"][key[1]])
        order.append(index[key])
    return {"name": name, "why": why, "expect": "any", "descriptor": corpus.b64(data), "segments": images,
            "fds": order, "ops": [list(map(str, o)) for o in ops], "base": bases[b]["entry"]["name"]}


def _map_nodes(node, type_, out, dictionaries=None, depth=0):
    """Appends (kind, node) for every map and union node."""
    import pyarrow as pa

    if depth > 70:
        return
    if isinstance(type_, pa.BaseExtensionType):
        type_ = type_.storage_type
    if pa.types.is_map(type_):
        out.append(("map", node))
    if pa.types.is_union(type_):
        out.append(("union", node))
    if pa.types.is_fixed_size_list(type_):
        out.append(("fsl", node, type_.list_size))
    if pa.types.is_string_view(type_) or pa.types.is_binary_view(type_):
        out.append(("view", node))
    if pa.types.is_union(type_):
        out.append(("union_buffers", node, type_.mode))
    if pa.types.is_dictionary(type_):
        if dictionaries is not None and 0 <= node["dictionary"] < len(dictionaries):
            _map_nodes(dictionaries[node["dictionary"]], type_.value_type, out, dictionaries, depth + 1)
        return
    for i, child in enumerate(node["children"][:type_.num_fields]):
        _map_nodes(child, type_.field(i).type, out, dictionaries, depth + 1)


# The crash classes below were fixed in f863c45; set ZERROW_FUZZ_SKIP_KNOWN=1 to skip
# them again (e.g. to fuzz past a regression of one of them).
SKIP_KNOWN_CRASHES = os.environ.get("ZERROW_FUZZ_SKIP_KNOWN") == "1"


def known_crash(data):
    """Inputs that hit an already reported crash (crash_*.json in the corpus): a map
    whose entries or keys claim nulls (MapArray::SetData), a union with a first
    buffer (UnionArray::SetData) abort the process; a union without type ids
    (or a dense one without offsets) or a view array without views segfaults;
    a fixed-size list whose
    offset + length runs past its child passes Arrow's validation and reads out
    of bounds."""
    import pyarrow as pa
    from test_share_common import SipcError, parse_sipc

    try:
        d = parse_sipc(data)
        schema = pa.ipc.read_schema(pa.py_buffer(d["schema"]))
    except (SipcError, Exception):
        return False
    maps = []
    for field, col in zip(schema, d["columns"]):
        for node in col:
            _map_nodes(node, field.type, maps, d["dictionaries"])
    for kind, m, *extra in maps:
        refs = m["buffers"]
        if kind == "view" and len(refs) > 1 and refs[1][0] == -1:
            return True
        if kind == "union_buffers":
            if (len(refs) > 1 and refs[1][0] == -1) or (extra[0] == "dense" and len(refs) > 2 and refs[2][0] == -1):
                return True
            continue
        if kind == "fsl":
            child = m["children"][0] if m["children"] else None
            if child is not None and (m["offset"] + m["length"]) * extra[0] > child["length"]:
                return True
            continue
        if kind == "union":
            if m["buffers"][:1] and m["buffers"][0][0] != -1:
                return True
            continue
        for entries in m["children"][:1]:
            if entries["null_count"] != 0 or any(k["null_count"] != 0 for k in entries["children"][:1]):
                return True
    return False


def normalize(message):
    return re.sub(r"-?\d+", "N", message)[:90]


def sweep_cases(bases):
    """Deterministic semantic mutations: every node of every base gets boundary
    offsets, lengths and null counts (with num_rows kept consistent where the node
    is a column chunk). Yields (data, fds, fd_source, base index, ops)."""
    from test_share_common import encode_sipc, parse_sipc

    for b, base in enumerate(bases):
        d0 = parse_sipc(base["descriptor"])
        paths = []

        def walk(node, path):
            paths.append(path)
            for i, c in enumerate(node["children"]):
                walk(c, path + ("children", i))
        for i, n in enumerate(d0["dictionaries"]):
            walk(n, ("dictionaries", i))
        for c, col in enumerate(d0["columns"]):
            for k, n in enumerate(col):
                walk(n, ("columns", c, k))
        for path in paths:
            for field, values in (("offset", [1, 7, 64, 4096, 1 << 20, 1 << 40]),
                                  ("length", [0, 1, 64, 4096, 1 << 20, 1 << 40]),
                                  ("null_count", [-1, 0, 1])):
                for v in values:
                    d = parse_sipc(base["descriptor"])
                    node = d
                    for p in path:
                        node = node[p]
                    if field == "null_count" and v > node["length"]:
                        continue
                    node[field] = v
                    if field == "length" and path[0] == "columns" and len(path) == 3:
                        d["num_rows"] = sum(n["length"] for n in d["columns"][path[1]])
                    if field == "length" and node["null_count"] > v:
                        node["null_count"] = -1
                    yield (encode_sipc(d), list(base["fds"]), [b] * len(base["fds"]), b,
                           [("sweep", "/".join(map(str, path)), field, v)])
            node0 = d0
            for p in path:
                node0 = node0[p]
            for k, (seg, off, ln) in enumerate(node0["buffers"]):
                for ref in ((-1, 0, 0), (-2, 0, 0), (seg, off, 0), (seg, off, ln // 2), (seg, off + 8, ln)):
                    if ref == (seg, off, ln):
                        continue
                    d = parse_sipc(base["descriptor"])
                    node = d
                    for p in path:
                        node = node[p]
                    node["buffers"][k] = ref
                    yield (encode_sipc(d), list(base["fds"]), [b] * len(base["fds"]), b,
                           [("sweep", "/".join(map(str, path)), f"buffer{k}", ref)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=3000)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--sweep", action="store_true", help="the deterministic node sweep instead of hypothesis")
    ap.add_argument("--tight", action="store_true", help="segments cut to their last referenced page")
    ap.add_argument("--start", type=int, default=0, help="--sweep: skip the first START cases")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    bases = load_bases(args.tight)
    outcomes = collections.Counter()
    count = [0]
    current = os.path.join(args.out, "current.json")

    @settings(max_examples=args.examples, deadline=None, database=None, derandomize=args.seed is not None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(mutated(bases))
    def run(case):
        data, fds, fd_source, b, ops = case
        entry = to_entry(bases, data, fds, fd_source, b, ops, "crash_" + corpus.entry_id(
            {"descriptor": corpus.b64(data), "fds": fds}), "the fuzzer crashed on this input")
        if SKIP_KNOWN_CRASHES and known_crash(data):
            outcomes["skipped: known crash"] += 1
            return
        with open(current, "w") as f:
            json.dump(entry, f)
        try:
            full, light = corpus.attach_both(data, fds)
        except Exception as e:  # not a ShareError: a validation gap
            entry["name"] = entry["name"].replace("crash_", "failure_")
            entry["why"] = f"attach raised {type(e).__name__}: {e}"
            with open(os.path.join(args.out, "failure.json"), "w") as f:
                json.dump(entry, f)
            raise
        count[0] += 1
        outcomes["ok" if full == "ok" else "error: " + normalize(full)] += 1
        if light == "ok" and full != "ok":
            outcomes["light ok, full error"] += 1

    if args.sweep:
        for i, case in enumerate(sweep_cases(bases)):
            if i < args.start:
                continue
            with open(os.path.join(args.out, "index"), "w") as f:
                f.write(str(i))
            run.hypothesis.inner_test(case)
        os.remove(current)
        print(json.dumps({"examples": count[0], "outcomes": dict(outcomes.most_common())}))
        return
    if args.seed is not None:
        import random
        random.seed(args.seed)
    try:
        run()
    except Exception:
        sys.exit(1)
    os.remove(current)
    print(json.dumps({"examples": count[0], "outcomes": dict(outcomes.most_common())}))


if __name__ == "__main__":
    main()
