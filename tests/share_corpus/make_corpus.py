"""Writes the SIPC regression corpus: real shares of many types (base_*.json, which
must attach) and hand-made nasty descriptors derived from them (bad_*.json, which
must fail with a ShareError naming the problem).

    python tests/share_corpus/make_corpus.py          # rewrites base_* and bad_*
Crash inputs found by the fuzzer (crash_*.json) are kept as they are.
"""

import copy
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import pyarrow as pa  # noqa: E402

import zerrow_pool as z  # noqa: E402
from sipc_corpus import b64, capture, save, unb64  # noqa: E402
from test_share_common import encode_sipc, parse_sipc  # noqa: E402

U64 = (1 << 64) - 1
I64 = (1 << 63) - 1


def base_objects():
    n = 20
    with z.scope():
        ints = pa.array([None if i % 3 == 0 else i for i in range(n)], pa.int64())
        strs = pa.array([None if i % 4 == 0 else "s" * (i % 5) + str(i) for i in range(n)])
        views = pa.array([("long view string %d " % i) * 2 for i in range(n)], pa.string_view())
        lists = pa.array([[i, None] if i % 2 else [] for i in range(n)], pa.list_(pa.int32()))
        struct_ = pa.StructArray.from_arrays([ints, strs], names=["a", "b"])
        map_ = pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64()))
        dense = pa.UnionArray.from_dense(pa.array([i % 2 for i in range(n)], pa.int8()),
                                         pa.array([i // 2 for i in range(n)], pa.int32()),
                                         [ints, strs], ["i", "s"])
        sparse = pa.UnionArray.from_sparse(pa.array([i % 2 for i in range(n)], pa.int8()), [ints, strs], ["i", "s"])
        ree = pa.RunEndEncodedArray.from_arrays(pa.array([5, 20], pa.int32()), pa.array(["x", "y"]))
        d = pa.array(["red", "green", "blue"])
        dict_chunks = pa.chunked_array([
            pa.DictionaryArray.from_arrays(pa.array([i % 3 for i in range(n)], pa.int8()), d),
            pa.DictionaryArray.from_arrays(pa.array([2, 1], pa.int8()), d)])
        # (a dictionary directly of a dictionary does not survive an IPC Schema message;
        # one nested in a list does)
        inner = pa.DictionaryArray.from_arrays(pa.array([1, 0, 1], pa.int8()), pa.array(["p", "q"]))
        dict_of_dict = pa.DictionaryArray.from_arrays(
            pa.array([0, 1] * (n // 2), pa.int32()),
            pa.ListArray.from_arrays(pa.array([0, 1, 3], pa.int32()), inner))
        fsl = pa.array([[i, i] for i in range(n)], pa.list_(pa.int16(), 2))
        bools = pa.array([i % 3 == 0 for i in range(n)])
        table = pa.table({"ints": ints, "strs": strs, "views": views, "lists": lists, "struct": struct_,
                          "map": map_, "dense": dense, "sparse": sparse, "ree": ree, "fsl": fsl,
                          "bools": bools})
        lv_values = pa.array(range(30), pa.int16())
        more = pa.table({
            "list_view": pa.ListViewArray.from_arrays(pa.array([(i * 3) % 25 for i in range(n)], pa.int32()),
                                                      pa.array([i % 4 for i in range(n)], pa.int32()), lv_values),
            "large_list_view": pa.LargeListViewArray.from_arrays(
                pa.array([i % 20 for i in range(n)], pa.int64()), pa.array([i % 3 for i in range(n)], pa.int64()),
                lv_values),
            "large_list": pa.array([[i] * (i % 3) for i in range(n)], pa.large_list(pa.int64())),
            "large_string": pa.array([None if i % 5 == 0 else "L" * i for i in range(n)], pa.large_string()),
            "binary_view": pa.array([b"short" if i % 2 else b"a much longer binary value %d" % i for i in range(n)],
                                    pa.binary_view()),
            "fixed_binary": pa.array([bytes([i]) * 5 for i in range(n)], pa.binary(5)),
            "decimal": pa.array([i * 10 for i in range(n)], pa.decimal128(12, 2)),
            "dict_str": pa.DictionaryArray.from_arrays(pa.array([i % 3 for i in range(n)], pa.int16()), d),
            "ree_int": pa.RunEndEncodedArray.from_arrays(pa.array([7, 20], pa.int16()), pa.array([1, 2], pa.int64())),
            "ts": pa.array(range(n), pa.timestamp("us", "UTC")),
            "nested": pa.array([{"x": [{"y": str(i)}]} for i in range(n)]),
        })
        return {
            "table_more": more.slice(2),
            "table": table.slice(1),
            "table_int": pa.table({"i": ints}),
            "table_str": pa.table({"s": strs}),
            "table_view": pa.table({"v": views}),
            "batch": pa.record_batch([ints, strs], names=["i", "s"]),
            "array_list": lists,
            "chunked_dict": dict_chunks,
            "array_dict_of_list_of_dict": dict_of_dict,
            "table_multichunk": pa.Table.from_batches([pa.record_batch([ints], names=["i"])] * 3),
        }


def bases():
    out = {}
    for name, obj in base_objects().items():
        with z.share(obj) as s:
            out[name] = capture(s, name=f"base_{name}", why=f"a real share of {name}", expect="ok")
    return out


def bad(base, name, why, match, descriptor=None, mutate=None, **extra):
    """A nasty entry from a base: raw descriptor bytes, or a function of the parsed descriptor."""
    e = copy.deepcopy(base)
    if mutate is not None:
        d = parse_sipc(unb64(base["descriptor"]))
        mutate(d)
        descriptor = encode_sipc(d)
    if descriptor is None:
        descriptor = unb64(base["descriptor"])
    e.update(name=f"bad_{name}", why=why, expect="error", match=match, descriptor=b64(descriptor), **extra)
    return e


def nested_depth(levels):
    """A raw node nested `levels` deep (one child each)."""
    node = {"length": 0, "null_count": 0, "offset": 0, "dictionary": -1, "buffers": [], "children": []}
    for _ in range(levels):
        node = {"length": 0, "null_count": 0, "offset": 0, "dictionary": -1, "buffers": [(-1, 0, 0)],
                "children": [node]}
    return node


def nasty(b):
    t = b["table_int"]
    raw = unb64(t["descriptor"])
    seg_size = t["segments"][0]["size"]
    out = []

    def node0(d):
        return d["columns"][0][0]

    def set_ref(i, ref):
        def f(d):
            node0(d)["buffers"][i] = ref
        return f

    out += [
        bad(t, "version_2", "a newer writer: the reader rejects unknown versions",
            "version 2 is not supported", descriptor=raw[:4] + struct.pack("<H", 2) + raw[6:]),
        bad(t, "version_0", "version 0", "version 0 is not supported",
            descriptor=raw[:4] + struct.pack("<H", 0) + raw[6:]),
        bad(t, "version_ffff", "version 65535", "version 65535 is not supported",
            descriptor=raw[:4] + b"\xff\xff" + raw[6:]),
        bad(t, "magic", "not a zerrow descriptor", "bad magic", descriptor=b"ARROW1" + raw[6:]),
        bad(t, "empty", "no bytes at all", "truncated", descriptor=b""),
        bad(t, "header_only", "cut after the header", "truncated", descriptor=raw[:16]),
        bad(t, "truncated_last_byte", "one byte short", "exceeds the descriptor size", descriptor=raw[:-1]),
        bad(t, "trailing", "garbage after the columns", "trailing bytes", descriptor=raw + b"\0"),
        bad(t, "kind_0", "object kind 0", "unknown object kind", descriptor=raw[:6] + b"\0" + raw[7:]),
        bad(t, "kind_9", "object kind 9", "unknown object kind", descriptor=raw[:6] + b"\x09" + raw[7:]),
        bad(t, "flags", "an unknown flag bit", "unknown flags", descriptor=raw[:7] + b"\x81" + raw[8:]),
        bad(t, "negative_rows", "row count -1", "negative row count", mutate=lambda d: d.update(num_rows=-1)),
        bad(t, "rows_mismatch", "row count differs from the column", "rows, expected",
            mutate=lambda d: d.update(num_rows=d["num_rows"] + 1)),
        bad(t, "segment_kind_7", "segment kind 7", "unknown segment kind",
            mutate=lambda d: d.update(segments=[(7, s) for _, s in d["segments"]])),
        bad(t, "segment_min_size", "the descriptor expects more bytes than the file has",
            "the descriptor expects", mutate=lambda d: d.update(segments=[(1, seg_size + 4096)])),
        bad(t, "segment_min_size_u64", "min size 2^64-1", "the descriptor expects",
            mutate=lambda d: d.update(segments=[(1, U64)])),
        bad(t, "segment_count_huge", "a segment count the bytes cannot hold", "exceeds the descriptor size",
            descriptor=raw[:16] + struct.pack("<I", 0xFFFFFFFF) + raw[20:]),
        bad(t, "segments_4097", "more segments than one descriptor may name", "more than 4096",
            mutate=lambda d: d.update(segments=[(1, 0)] * 4097), fds=[0] * 4097),
        bad(t, "schema_len_huge", "schema length past the end", "truncated",
            descriptor=raw[:29] + struct.pack("<I", 0x7FFFFFFF) + raw[33:]),
        bad(t, "schema_garbage", "schema bytes that are not an Arrow Schema message", "bad schema",
            mutate=lambda d: d.update(schema=b"\xff" * 64)),
        bad(t, "schema_empty", "an empty schema", "bad schema", mutate=lambda d: d.update(schema=b"")),
        bad(t, "columns_extra", "two columns for a one-field schema", "columns for a schema of 1 fields",
            mutate=lambda d: d.update(columns=d["columns"] * 2)),
        bad(t, "columns_none", "no columns for a one-field schema", "0 columns for a schema of 1",
            mutate=lambda d: d.update(columns=[])),
        bad(t, "node_negative_length", "node length -1", "node has length -1",
            mutate=lambda d: node0(d).update(length=-1)),
        bad(t, "node_negative_offset", "node offset -5", "offset -5",
            mutate=lambda d: node0(d).update(offset=-5)),
        bad(t, "node_null_count_above_length", "null count > length", "null count",
            mutate=lambda d: node0(d).update(null_count=node0(d)["length"] + 1)),
        bad(t, "node_offset_overflow", "offset + length past 2^63", "overflows",
            mutate=lambda d: node0(d).update(offset=I64)),
        bad(t, "node_longer_than_buffer", "more values than the buffer holds", "invalid array",
            mutate=lambda d: (node0(d).update(length=10_000), d.update(num_rows=10_000))),
        bad(t, "buffers_missing", "int64 with one buffer", "needs 2 buffers, got 1",
            mutate=lambda d: node0(d).update(buffers=node0(d)["buffers"][:1])),
        bad(t, "buffers_extra", "int64 with three buffers", "needs 2 buffers, got 3",
            mutate=lambda d: node0(d).update(buffers=node0(d)["buffers"] + [(-1, 0, 0)])),
        bad(t, "children_extra", "int64 with a child", "has 0 children, got 1",
            mutate=lambda d: node0(d).update(children=[nested_depth(0)])),
        bad(t, "nesting_65", "children 65 deep", "nesting", mutate=lambda d: d["columns"][0].__setitem__(
            0, nested_depth(70))),
        bad(t, "buffer_count_huge", "a buffer count the bytes cannot hold", "buffer count",
            descriptor=_patch_first_node_u32(raw, 24, 0xFFFFFFF0)),
        bad(t, "child_count_huge", "a child count the bytes cannot hold", "child count",
            descriptor=_patch_first_node_u32(raw, 28, 0xFFFFFFF0)),
        bad(t, "ref_segment_out_of_range", "segment 7 of 1", "refers to segment 7",
            mutate=set_ref(1, (7, 0, 8))),
        bad(t, "ref_segment_minus_3", "segment -3", "refers to segment -3", mutate=set_ref(1, (-3, 0, 8))),
        bad(t, "ref_segment_int_min", "segment -2^31", "refers to segment", mutate=set_ref(1, (-(1 << 31), 0, 8))),
        bad(t, "ref_offset_u64_max", "offset 2^64-1", "lies outside", mutate=set_ref(1, (0, U64, 8))),
        bad(t, "ref_length_u64_max", "length 2^64-1", "lies outside", mutate=set_ref(1, (0, 8, U64))),
        bad(t, "ref_offset_plus_length_wraps", "offset + length wraps past 2^64", "lies outside",
            mutate=set_ref(1, (0, 64, U64 - 63))),
        bad(t, "ref_past_file_end", "one byte past the end of the file", "lies outside",
            mutate=set_ref(1, (0, seg_size - 7, 8))),
        bad(t, "ref_empty_with_length", "segment -2 (empty) with a length", "empty buffer with a length",
            mutate=set_ref(1, (-2, 0, 8))),
        bad(t, "dictionary_on_int", "a dictionary index on an int64 column", "is not a dictionary type",
            mutate=lambda d: node0(d).update(dictionary=0)),
        bad(t, "fds_missing", "the descriptor names a segment but no fd came", "segments but 0 fds", fds=[]),
        bad(t, "fds_extra", "two fds for one segment", "segments but 2 fds", fds=[0, 0]),
    ]
    for kind, match in (("pipe", "is not a memfd"), ("tmpfile", "is not a memfd"), ("unsealed", "not sealed"),
                        ("closed", "is not open"), ("socket", "is not a memfd"), ("dir", "is not a memfd")):
        out.append(bad(t, f"fd_{kind}", f"a {kind} instead of a sealed memfd", match, descriptor=raw,
                       fd_kinds=[kind]))
    # kind-specific ones
    bt = b["batch"]
    out.append(bad(bt, "batch_two_chunks", "a record batch with two chunks per column", "one chunk per column",
                   mutate=lambda d: d.update(columns=[c * 2 for c in d["columns"]], num_rows=d["num_rows"] * 2)))
    out.append(bad(bt, "array_two_columns", "an array descriptor with two columns", "exactly one column",
                   mutate=lambda d: d.update(kind=3)))
    cd = b["chunked_dict"]
    out.append(bad(cd, "dictionary_index_out_of_range", "dictionary 5 of 1", "dictionary index 5",
                   mutate=lambda d: d["columns"][0][0].update(dictionary=5)))
    out.append(bad(cd, "dictionary_index_negative", "dictionary -7", "dictionary index -7",
                   mutate=lambda d: d["columns"][0][0].update(dictionary=-7)))
    out.append(bad(cd, "dictionary_missing", "a dictionary column without its dictionary", "dictionary index -1",
                   mutate=lambda d: d["columns"][0][1].update(dictionary=-1)))
    dd = b["array_dict_of_list_of_dict"]
    out.append(bad(dd, "dictionary_self_reference", "a dictionary whose values use itself", "refers to itself",
                   mutate=lambda d: d["dictionaries"][1]["children"][0].update(dictionary=1)))
    out.append(bad(dd, "dictionary_wrong_index", "a column pointing at a dictionary of another type",
                   "needs 2 buffers, got 3",
                   mutate=lambda d: d["columns"][0][0].update(dictionary=0)))
    st = b["table_str"]
    out.append(bad(st, "string_offsets_past_data", "a string offsets buffer pointing past the data",
                   "invalid array", mutate=_shrink_last_buffer))
    return out


CRASH_REASON = ("BUG share_import.cc: Attach() calls arrow::MakeArray() before validating; MapArray::SetData "
                "ARROW_CHECKs its child data, so a map whose entries (or keys) claim nulls aborts the consumer "
                "(SIGABRT) instead of raising ShareError")
FSL_REASON = ("BUG share_import.cc (and Arrow 26 ValidateFull): a fixed_size_list node's offset is not checked "
              "against its child: (offset + length) * list_size may exceed the child's length; Validate/"
              "ValidateFull accept it and reading the values reads out of bounds (SIGSEGV for large offsets; "
              "ARROW_CHECK abort in ArrayData::Slice on some paths). The importer must check it itself")
NULL_BUFFER_REASON = ("BUG share_import.cc: a buffer reference -1 (null pointer) is accepted in any position; for "
                      "a union's type ids or offsets, or a view array's views, Arrow's Validate() does not notice, "
                      "so attach(validate_full=False) succeeds and reading segfaults, and "
                      "attach(validate_full=True) segfaults inside ValidateFull. Only validity bitmaps may be -1; "
                      "elsewhere the importer should refuse -1 or substitute a non-null empty buffer")
UNION_REASON = ("BUG share_import.cc: Attach() calls arrow::MakeArray() before validating; UnionArray::SetData "
                "ARROW_CHECKs that buffers[0] is null, so a union node whose first buffer reference is not -1 "
                "(an empty buffer -2 or any segment) aborts the consumer (SIGABRT) instead of raising ShareError")


def crashes(b):
    """Minimal inputs for crashes found by the fuzzer; fixed in f863c45, kept as regressions
    (an entry with a "known_crash" reason is replayed alone and xfails while it crashes)."""
    t = b["table"]
    d0 = parse_sipc(unb64(t["descriptor"]))
    schema = pa.ipc.read_schema(pa.py_buffer(d0["schema"]))
    col = schema.get_field_index("map")

    def entries(d):
        return d["columns"][col][0]["children"][0]

    out = []
    for name, why, mutate in (
            ("map_entries_null_count", "the entries struct of a map claims 2 nulls (no validity buffer)",
             lambda d: entries(d).update(null_count=2)),
            ("map_keys_null_count", "the keys of a map claim a null",
             lambda d: entries(d)["children"][0].update(null_count=1))):
        e = bad(t, name, why, "map", mutate=mutate)
        e["name"] = f"crash_{name}"
        e["why"] += f" [crashed the consumer until f863c45: {CRASH_REASON}]"
        out.append(e)
    for union in ("dense", "sparse"):
        ucol = schema.get_field_index(union)
        for name, ref in (("empty", (-2, 0, 0)), ("segment", None)):
            def mutate(d, ucol=ucol, ref=ref):
                node = d["columns"][ucol][0]
                node["buffers"][0] = ref or node["buffers"][1]
            e = bad(t, f"{union}_union_validity_{name}", f"a {union} union whose (always absent) validity "
                    f"buffer is {'an empty buffer' if ref else 'a real range'}", "union", mutate=mutate)
            e["name"] = f"crash_{union}_union_validity_{name}"
            e["why"] += f" [crashed the consumer until f863c45: {UNION_REASON}]"
            out.append(e)
    fcol = schema.get_field_index("fsl")
    for name, off in (("4096", 4096), ("2_40", 1 << 40)):
        e = bad(t, f"fsl_offset_{name}", f"a fixed-size list sliced at {off}, far past its child's values: Arrow's "
                "ValidateFull accepts it and reading it reads out of bounds", "fixed",
                mutate=lambda d, off=off: d["columns"][fcol][0].update(offset=off))
        e["name"] = f"crash_fsl_offset_{name}"
        e["why"] += f" [crashed the consumer until f863c45: {FSL_REASON}]"
        out.append(e)
    for base, col, k, name in (("table", "sparse", 1, "sparse_union_type_ids"),
                               ("table", "dense", 1, "dense_union_type_ids"),
                               ("table", "dense", 2, "dense_union_offsets"),
                               ("table", "views", 1, "string_view_views"),
                               ("table_view", "v", 1, "string_view_views_alone")):
        src = b[base]
        sch = pa.ipc.read_schema(pa.py_buffer(parse_sipc(unb64(src["descriptor"]))["schema"]))
        ci = sch.get_field_index(col)
        e = bad(src, f"null_{name}", f"the {name.replace('_', ' ')} buffer referenced as -1 (a null pointer): "
                "Arrow's Validate does not notice, ValidateFull and any read dereference it", "buffer",
                mutate=lambda d, ci=ci, k=k: d["columns"][ci][0]["buffers"].__setitem__(k, (-1, 0, 0)))
        e["name"] = f"crash_null_{name}"
        e["why"] += f" [crashed the consumer until f863c45: {NULL_BUFFER_REASON}]"
        out.append(e)
    return out


def _shrink_last_buffer(d):
    node = d["columns"][0][0]
    seg, off, ln = node["buffers"][2]
    node["buffers"][2] = (seg, off, max(0, ln // 2))


def _patch_first_node_u32(raw, rel, value):
    """Overwrites a u32 field of the first column's first node (rel: offset within the node)."""
    from test_share_common import sipc_fields

    fields = sipc_fields(raw)
    start = next(off for off, size, _, name in fields if name == "nchunks") + 4
    return raw[:start + rel] + struct.pack("<I", value) + raw[start + rel + 4:]


def main():
    for name in os.listdir(HERE):
        if name.startswith(("base_", "bad_", "crash_map_", "crash_dense_", "crash_sparse_", "crash_fsl_",
                                 "crash_null_")) and name.endswith(".json"):
            os.remove(os.path.join(HERE, name))
    b = bases()
    for e in b.values():
        save(e)
    entries = nasty(b)
    for e in entries:
        save(e)
    for e in crashes(b):
        save(e)
    print(f"{len(b)} base and {len(entries)} nasty entries written to {HERE}")


if __name__ == "__main__":
    main()
