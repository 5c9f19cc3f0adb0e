"""Every Arrow type round-trips exactly through share -> attach, in this process
and across a process (a persistent echo worker that attaches, validates fully
and reshares what it got)."""

import datetime
import os
import decimal
import random

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import zerrow_pool as z
from test_share_common import Worker, all_nodes, parse_sipc

# A user extension type; the same source is run in the echo worker, so that
# both processes have it registered.
USER_EXT = '''
import pyarrow as pa

class RationalType(pa.ExtensionType):
    def __init__(self):
        super().__init__(pa.struct([("num", pa.int32()), ("den", pa.int32())]), "zerrow.test.rational")

    def __arrow_ext_serialize__(self):
        return b"v1"

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type, serialized):
        assert serialized == b"v1"
        return cls()

try:
    pa.register_extension_type(RationalType())
except pa.ArrowKeyError:
    pass
'''
_ns = {}
exec(USER_EXT, _ns)
RationalType = _ns["RationalType"]


def _typed(values, type_):
    return pa.array(values, type_)


def build_cases():
    """[(id, object)] covering the Arrow type system; built in the current pool."""
    n = 37
    ints = [None if i % 7 == 3 else i * 3 - 50 for i in range(n)]
    uints = [None if i % 7 == 3 else i * 3 for i in range(n)]
    floats = [None if i % 5 == 0 else i / 4 for i in range(n)]
    strs = [None if i % 6 == 0 else ("x" * (i % 19)) + str(i) for i in range(n)]
    bins = [None if s is None else s.encode() for s in strs]
    cases = []
    for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64()):
        cases.append((str(t), _typed(ints, t)))
    for t in (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()):
        cases.append((str(t), _typed(uints, t)))
    for t in (pa.float32(), pa.float64()):
        cases.append((str(t), _typed(floats, t)))
    import numpy as np
    cases.append(("float16", pa.concat_arrays([pa.array(np.arange(n, dtype=np.float16), pa.float16())])))
    cases.append(("bool", pa.array([None if i % 4 == 0 else i % 3 == 0 for i in range(n)])))
    cases.append(("null", pa.nulls(n)))
    cases.append(("date32", _typed([None if i % 5 == 2 else datetime.date(2000, 1, 1) + datetime.timedelta(i)
                                    for i in range(n)], pa.date32())))
    cases.append(("date64", _typed([datetime.date(1970, 1, 2)] * n, pa.date64())))
    for unit in ("s", "ms"):
        cases.append((f"time32[{unit}]", _typed([i * 1000 for i in range(n)], pa.time32(unit))))
    for unit in ("us", "ns"):
        cases.append((f"time64[{unit}]", _typed([i * 1000 for i in range(n)], pa.time64(unit))))
    for unit, tz in (("s", None), ("ms", "UTC"), ("us", "Europe/Paris"), ("ns", None)):
        cases.append((f"timestamp[{unit},{tz}]", _typed(ints, pa.timestamp(unit, tz))))
    cases.append(("duration", _typed(ints, pa.duration("us"))))
    cases.append(("month_day_nano", pa.array([pa.MonthDayNano([i, -i, i * 1000]) for i in range(n)])))
    decs = [None if i % 4 == 1 else decimal.Decimal(f"{i}.{i:02d}") for i in range(n)]
    for t in (pa.decimal32(7, 2), pa.decimal64(12, 2), pa.decimal128(20, 2), pa.decimal256(50, 2)):
        cases.append((str(t), _typed(decs, t)))
    cases.append(("fixed_size_binary", _typed([None if b is None else (b + b"_" * 24)[:24] for b in bins],
                                              pa.binary(24))))
    for t in (pa.string(), pa.large_string(), pa.string_view()):
        cases.append((str(t), _typed(strs, t)))
    for t in (pa.binary(), pa.large_binary(), pa.binary_view()):
        cases.append((str(t), _typed(bins, t)))
    # views with several variadic data buffers (long strings, concatenated chunks)
    long = [("long string number %d " % i) * 8 for i in range(200)]
    sv = pa.concat_arrays([pa.array(long[:100], pa.string_view()), pa.array(long[100:], pa.string_view())])
    assert len(sv.buffers()) > 3
    cases.append(("string_view_multi_variadic", sv))
    cases.append(("binary_view_multi_variadic",
                  pa.concat_arrays([pa.array([s.encode() for s in long[:50]], pa.binary_view()),
                                    pa.array([s.encode() for s in long[50:]], pa.binary_view())])))
    lists = [None if i % 5 == 4 else list(range(i % 4)) for i in range(n)]
    cases.append(("list", _typed(lists, pa.list_(pa.int32()))))
    cases.append(("large_list", _typed(lists, pa.large_list(pa.int64()))))
    # (pa.array() allocates a list view's sizes buffer outside the default pool: build from parts)
    lv_values = pa.array(range(60), pa.int16())
    lv_offsets = [(i * 7) % 50 for i in range(n)]
    lv_sizes = [i % 4 for i in range(n)]
    lv_mask = pa.array([i % 5 == 4 for i in range(n)])
    cases.append(("list_view", pa.ListViewArray.from_arrays(
        pa.array(lv_offsets, pa.int32()), pa.array(lv_sizes, pa.int32()), lv_values, mask=lv_mask)))
    cases.append(("large_list_view", pa.LargeListViewArray.from_arrays(
        pa.array(lv_offsets, pa.int64()), pa.array(lv_sizes, pa.int64()), lv_values.cast(pa.string()),
        mask=lv_mask)))
    cases.append(("fixed_size_list", _typed([None if i % 3 == 0 else [i, i + 1, None] for i in range(n)],
                                            pa.list_(pa.int64(), 3))))
    cases.append(("list_of_list_of_strings",
                  _typed([None if i % 4 == 0 else [[str(i)] * (i % 3), None] for i in range(n)],
                         pa.list_(pa.list_(pa.string())))))
    cases.append(("struct", pa.StructArray.from_arrays(
        [_typed(ints, pa.int64()), _typed(strs, pa.string()), _typed(lists, pa.list_(pa.int8()))],
        names=["a", "b", "c"], mask=pa.array([i % 9 == 8 for i in range(n)]))))
    cases.append(("empty_struct", pa.array([{}] * 5, pa.struct([]))))
    cases.append(("map", _typed([None if i % 6 == 5 else [(f"k{j}", j if j % 2 else None) for j in range(i % 4)]
                                 for i in range(n)], pa.map_(pa.string(), pa.int32()))))
    types = pa.array([i % 3 for i in range(n)], pa.int8())
    kids = [_typed(ints, pa.int64()), _typed(strs, pa.string()), _typed(floats, pa.float64())]
    cases.append(("sparse_union", pa.UnionArray.from_sparse(types, kids, ["i", "s", "f"])))
    offsets = pa.array([i // 3 for i in range(n)], pa.int32())
    cases.append(("dense_union", pa.UnionArray.from_dense(types, offsets, kids, ["i", "s", "f"])))
    cases.append(("dictionary_int8_string", pa.DictionaryArray.from_arrays(
        pa.array([None if i % 7 == 0 else i % 4 for i in range(n)], pa.int8()), pa.array(["a", "bb", "ccc", None]))))
    cases.append(("dictionary_uint32_list", pa.DictionaryArray.from_arrays(
        pa.array([i % 2 for i in range(n)], pa.uint32()), _typed([[1, 2], None], pa.list_(pa.int32())))))
    cases.append(("dictionary_of_dictionary_struct", pa.StructArray.from_arrays(
        [pa.DictionaryArray.from_arrays(pa.array([i % 3 for i in range(n)], pa.int16()),
                                        pa.array(["x", "y", "z"]))], names=["d"])))
    cases.append(("run_end_encoded", pa.RunEndEncodedArray.from_arrays(
        pa.array([3, 10, 11, 37], pa.int32()), pa.array(["a", None, "c", "d"]))))
    cases.append(("run_end_encoded_int64_ends", pa.RunEndEncodedArray.from_arrays(
        pa.array([5, 37], pa.int64()), pa.array([1.5, 2.5]))))
    uuid_storage = pa.array([None if i % 4 == 0 else bytes([i]) * 16 for i in range(n)], pa.binary(16))
    cases.append(("uuid", pa.ExtensionArray.from_storage(pa.uuid(), uuid_storage)))
    cases.append(("json", pa.ExtensionArray.from_storage(pa.json_(), _typed(
        [None if i % 3 == 0 else '{"a": %d}' % i for i in range(n)], pa.string()))))
    cases.append(("bool8", pa.ExtensionArray.from_storage(pa.bool8(), pa.array([i % 3 for i in range(n)],
                                                                                 pa.int8()))))
    cases.append(("opaque", pa.ExtensionArray.from_storage(pa.opaque(pa.int64(), "geom", "vendor"),
                                                           _typed(ints, pa.int64()))))
    tensor_type = pa.fixed_shape_tensor(pa.float32(), [2, 3], dim_names=["r", "c"])
    cases.append(("fixed_shape_tensor", pa.ExtensionArray.from_storage(tensor_type, pa.array(
        [[float(i * 6 + j) for j in range(6)] for i in range(n)], pa.list_(pa.float32(), 6)))))
    cases.append(("user_extension", pa.ExtensionArray.from_storage(RationalType(), pa.StructArray.from_arrays(
        [pa.array(range(n), pa.int32()), pa.array([i + 1 for i in range(n)], pa.int32())], names=["num", "den"]))))
    # slices with non-zero offsets (bitmaps at odd bit offsets too)
    base = dict(cases)
    for name in ("int64", "bool", "string", "large_binary", "string_view", "list", "list_view",
                 "fixed_size_list", "struct", "map", "sparse_union", "dense_union",
                 "dictionary_int8_string", "run_end_encoded", "uuid", "user_extension"):
        cases.append((f"slice_{name}", base[name].slice(3, 21)))
    cases.append(("slice_of_slice_string", base["string"].slice(1, 30).slice(5, 7)))
    cases.append(("empty_slice_int64", base["int64"].slice(n)))
    return cases


def build_tables():
    """[(id, Table/RecordBatch/ChunkedArray)] covering containers and metadata."""
    out = []
    cases = build_cases()
    arrays = [a for _, a in cases]
    names = [name for name, _ in cases]
    meta_fields = [pa.field(nm, a.type, metadata={"field_meta": nm}) for nm, a in zip(names, arrays)]
    schema = pa.schema(meta_fields, metadata={"schema_meta": "yes", "k": "v" * 100})
    # every type as one column of a table; columns must have equal lengths
    full = [(nm, a) for nm, a in cases if len(a) == 37]
    tbl = pa.table([a for _, a in full], schema=pa.schema(
        [pa.field(nm, a.type, metadata={"field_meta": nm}) for nm, a in full], metadata={"schema_meta": "yes"}))
    out.append(("table_all_types", tbl))
    out.append(("table_multichunk", pa.concat_tables([tbl, tbl.slice(4, 9), tbl.slice(0, 0), tbl])))
    out.append(("table_sliced", tbl.slice(11, 17)))
    out.append(("table_empty", tbl.slice(0, 0)))
    out.append(("table_zero_columns", pa.table({}).replace_schema_metadata({"x": "1"})))
    out.append(("table_zero_columns_rows", pa.Table.from_batches([pa.RecordBatch.from_pydict({})])))
    out.append(("table_no_chunks", pa.Table.from_batches([], schema=pa.schema([("a", pa.int64())]))))
    out.append(("record_batch", pa.RecordBatch.from_arrays([a for _, a in full], schema=tbl.schema)))
    out.append(("record_batch_zero_columns", pa.RecordBatch.from_pydict({})))
    out.append(("record_batch_sliced", pa.RecordBatch.from_arrays([a for _, a in full], schema=tbl.schema)
                .slice(2, 5)))
    out.append(("chunked_array", pa.chunked_array([a for nm, a in cases if nm == "string"] * 3
                                                  + [pa.array(["x"], pa.string()).slice(1),
                                                     pa.array([], pa.string())])))
    out.append(("chunked_array_no_chunks", pa.chunked_array([], pa.int32())))
    d = pa.array(["red", "green", "blue"])
    shared_dict = pa.chunked_array([pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 1], pa.int32()), d),
                                    pa.DictionaryArray.from_arrays(pa.array([2, 2, None], pa.int32()), d)])
    out.append(("chunked_shared_dictionary", shared_dict))
    del schema
    return out


def assert_same(got, want):
    assert type(got) is type(want)
    if isinstance(want, (pa.Table, pa.RecordBatch)):
        assert got.schema.equals(want.schema, check_metadata=True)
        assert got.equals(want, check_metadata=True)
        assert got.num_rows == want.num_rows
    elif isinstance(want, pa.ChunkedArray):
        assert got.type == want.type
        assert got.equals(want)
        assert [len(c) for c in got.chunks] == [len(c) for c in want.chunks]
    else:
        assert got.type == want.type
        assert got.equals(want)
        assert got.offset == want.offset
        assert got.null_count == want.null_count
        assert len(got) == len(want)
    if isinstance(want, pa.Array):
        got.validate(full=True)
    else:
        got.validate(full=True)


_ARRAYS = None
_TABLES = None


def arrays():
    global _ARRAYS
    if _ARRAYS is None:
        with z.scope():
            _ARRAYS = build_cases()
    return _ARRAYS


def tables():
    global _TABLES
    if _TABLES is None:
        with z.scope():
            _TABLES = build_tables()
    return _TABLES


ARRAY_IDS = [name for name, _ in build_cases()]
TABLE_IDS = [name for name, _ in build_tables()]


@pytest.mark.parametrize("name", ARRAY_IDS)
def test_array_roundtrip_in_process(name):
    a = dict(arrays())[name]
    with z.share(a) as s:
        assert s.bytes_copied == 0, "built in the pool: nothing to copy"
        got = s.attach()
    assert_same(got, a)
    assert z.owns(got)
    # the same as a chunked array
    with z.share(pa.chunked_array([a, a])) as s:
        assert_same(s.attach(), pa.chunked_array([a, a]))


@pytest.mark.parametrize("name", TABLE_IDS)
def test_container_roundtrip_in_process(name):
    obj = dict(tables())[name]
    with z.share(obj) as s:
        assert s.bytes_copied == 0
        got = z.attach(s.descriptor, s.fds, validate_full=True)
    assert_same(got, obj)


def test_roundtrip_outside_pool_copies_once():
    with z.share(pa.table({"a": list(range(1000)), "s": [str(i) for i in range(1000)]})) as s:
        assert s.bytes_copied == s.nbytes > 0 and s.bytes_zero_copy == 0
        got = s.attach()
    assert got.column("s")[999].as_py() == "999"
    # mixed: one column in the pool, one not
    with z.scope():
        pooled = pa.array(range(100), pa.int64())
    outside = pa.array(range(100), pa.int32())
    with z.share(pa.table({"p": pooled, "o": outside})) as s:
        assert s.bytes_zero_copy == pooled.nbytes
        assert s.bytes_copied == outside.nbytes


def test_shared_dictionary_described_once():
    obj = dict(tables())["chunked_shared_dictionary"]
    with z.share(obj) as s:
        d = parse_sipc(s.descriptor)
        assert len(d["dictionaries"]) == 1
        assert [n["dictionary"] for n in d["columns"][0]] == [0, 0]
        # 2 chunks x (validity? + indices) + dictionary (offsets + data; no nulls) once
        chunk_bufs = sum(1 for c in obj.chunks for b in c.buffers() if b is not None and b.size)
        dict_bufs = sum(1 for b in obj.chunks[0].dictionary.buffers() if b is not None and b.size)
        assert s.nbuffers == chunk_bufs + dict_bufs
        got = s.attach()
    assert_same(got, obj)
    # the consumer gets one dictionary object too
    assert got.chunk(0).dictionary.buffers()[1].address == got.chunk(1).dictionary.buffers()[1].address


def test_empty_and_null_buffers_in_descriptor():
    with z.scope():
        a = pa.array([1, 2, 3], pa.int64())  # no validity bitmap: null buffer
        e = pa.array([], pa.string())
    with z.share(pa.table({"a": a.slice(0, 0), "e": e})) as s:
        d = parse_sipc(s.descriptor)
        refs = [b for n in all_nodes(d) for b in n["buffers"]]
        assert (-1, 0, 0) in refs and (-2, 0, 0) in refs
    with z.share(pa.table({"a": a.slice(0, 0)})) as s:
        assert z.attach(s.descriptor, s.fds).num_rows == 0
    with z.share(a) as s:
        (node,) = parse_sipc(s.descriptor)["columns"][0]
        assert node["buffers"][0] == (-1, 0, 0) and node["buffers"][1][0] == 0


@pytest.mark.parametrize("values", [[], [None, ""], [""]])
def test_string_array_without_value_bytes(values):
    with z.scope():
        a = pa.array(values, pa.string())
    with z.share(a) as s:
        got = z.attach(s.descriptor, s.fds)
    assert_same(got, a)


@pytest.mark.parametrize("obj", [pa.nulls(4), pa.table({}), pa.array([{}] * 3, pa.struct([]))],
                         ids=["nulls", "zero_columns", "empty_struct"])
def test_share_without_segments_attaches(obj):
    with z.share(obj) as s:
        assert s.fds == []
        got = s.attach()
    assert got.equals(obj)


def test_dictionary_of_dictionary():
    with z.scope():
        inner = pa.DictionaryArray.from_arrays(pa.array([1, 0], pa.int8()), pa.array(["p", "q"]))
        a = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), inner)
    try:
        s = z.share(a)
    except z.ShareError:
        return  # refusing up front is fine too
    with s:
        assert_same(z.attach(s.descriptor, s.fds), a)


def test_recv_object_without_buffers():
    a, b = z.Channel.pair()
    with a, b:
        a.send(pa.nulls(3))
        assert b.recv().equals(pa.nulls(3))


# -- across a process


ECHO = USER_EXT + '''
while True:
    try:
        obj = recv_obj(sock, validate_full=True)
    except EOFError:
        break
    except z.ShareError as e:
        reply({"error": str(e)})
        continue
    obj.validate(full=True)
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        types = [str(f.type) for f in obj.schema]
        meta = {k.decode(): v.decode() for k, v in (obj.schema.metadata or {}).items()}
    else:
        types = [str(obj.type)]
        meta = {}
    ext = [type(f.type).__name__ for f in obj.schema] if hasattr(obj, "schema") else [type(obj.type).__name__]
    reply({"types": types, "meta": meta, "ext": ext, "owns": z.owns(obj)})
    z.send(sock, obj)
'''


@pytest.fixture(scope="module")
def echo():
    with Worker(ECHO) as w:
        yield w


def _through(worker, obj):
    worker.send(obj)
    info = worker.read()
    assert "error" not in info, info["error"]
    back = worker.recv()
    return info, back


def test_every_array_type_across_process(echo):
    for name, a in arrays():
        info, back = _through(echo, a)
        assert info["types"] == [str(a.type)], name
        assert info["owns"], name
        assert_same(back, a)


@pytest.mark.parametrize("name", TABLE_IDS)
def test_containers_across_process(echo, name):
    obj = dict(tables())[name]
    info, back = _through(echo, obj)
    assert_same(back, obj)
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        assert info["types"] == [str(f.type) for f in obj.schema]
        assert info["meta"] == {k.decode(): v.decode() for k, v in (obj.schema.metadata or {}).items()}


def test_user_extension_type_is_rebuilt_in_the_consumer(echo):
    a = dict(arrays())["user_extension"]
    info, back = _through(echo, pa.table({"r": a}))
    assert info["ext"] == ["RationalType"]
    assert isinstance(back.column("r").type, RationalType)


# -- random tables (hypothesis)


def _type_strategy():
    leaves = st.sampled_from([
        pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint64(), pa.float32(), pa.float64(),
        pa.bool_(), pa.string(), pa.large_string(), pa.string_view(), pa.binary(), pa.binary_view(),
        pa.large_binary(), pa.binary(3), pa.date32(), pa.timestamp("ms"), pa.decimal128(10, 3), pa.null(),
    ])

    def extend(children):
        return st.one_of(
            children.map(pa.list_), children.map(pa.large_list), children.map(pa.list_view),
            children.map(lambda t: pa.list_(t, 2)),
            st.lists(children, min_size=1, max_size=3).map(
                lambda ts: pa.struct([(f"f{i}", t) for i, t in enumerate(ts)])),
            st.tuples(st.sampled_from([pa.int32(), pa.string()]), children).map(lambda kv: pa.map_(*kv)),
            st.lists(children, min_size=1, max_size=3).map(
                lambda ts: pa.sparse_union([pa.field(f"u{i}", t) for i, t in enumerate(ts)])),
            st.lists(children, min_size=1, max_size=3).map(
                lambda ts: pa.dense_union([pa.field(f"u{i}", t) for i, t in enumerate(ts)])),
        )
    return st.recursive(leaves, extend, max_leaves=6)


def _scalar(t, rng):
    if pa.types.is_integer(t):
        info = (8 * t.byte_width)
        lo = 0 if pa.types.is_unsigned_integer(t) else -(1 << (info - 1))
        hi = (1 << info) - 1 if pa.types.is_unsigned_integer(t) else (1 << (info - 1)) - 1
        return rng.choice([lo, hi, 0, rng.randint(lo, hi)])
    if pa.types.is_floating(t):
        return rng.uniform(-1e6, 1e6)
    if pa.types.is_boolean(t):
        return rng.random() < 0.5
    if pa.types.is_fixed_size_binary(t):
        return bytes(rng.randrange(256) for _ in range(t.byte_width))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "".join(rng.choice("abcé€\U0001f600 ") for _ in range(rng.randrange(30)))
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return bytes(rng.randrange(256) for _ in range(rng.randrange(30)))
    if pa.types.is_date32(t):
        return datetime.date(2000, 1, 1) + datetime.timedelta(rng.randrange(10000))
    if pa.types.is_timestamp(t):
        return rng.randrange(1 << 40)
    if pa.types.is_decimal(t):
        return decimal.Decimal(rng.randrange(-10**6, 10**6)) / 1000
    raise NotImplementedError(t)


def random_array(t, length, rng, nulls=True):
    """An array of type t built bottom-up (children first), with nulls."""
    def valid_mask():
        return pa.array([rng.random() < 0.2 for _ in range(length)], pa.bool_()) if nulls else None
    if pa.types.is_null(t):
        return pa.nulls(length)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        sizes = [rng.randrange(4) for _ in range(length)]
        offs = [0]
        for s in sizes:
            offs.append(offs[-1] + s)
        values = random_array(t.value_type, offs[-1], rng)
        ot = pa.int64() if pa.types.is_large_list(t) else pa.int32()
        if pa.types.is_list_view(t):
            return pa.ListViewArray.from_arrays(pa.array(offs[:-1], ot), pa.array(sizes, ot), values,
                                                mask=valid_mask())
        cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
        return cls.from_arrays(pa.array(offs, ot), values, mask=valid_mask())
    if pa.types.is_fixed_size_list(t):
        values = random_array(t.value_type, length * t.list_size, rng)
        return pa.FixedSizeListArray.from_arrays(values, t.list_size, mask=valid_mask())
    if pa.types.is_struct(t):
        kids = [random_array(t.field(i).type, length, rng) for i in range(t.num_fields)]
        return pa.StructArray.from_arrays(kids, fields=list(t), mask=valid_mask())
    if pa.types.is_map(t):
        sizes = [rng.randrange(3) for _ in range(length)]
        offs = [0]
        for s in sizes:
            offs.append(offs[-1] + s)
        keys = random_array(t.key_type, offs[-1], rng, nulls=False)
        items = random_array(t.item_type, offs[-1], rng)
        return pa.MapArray.from_arrays(pa.array(offs, pa.int32()), keys, items)
    if pa.types.is_union(t):
        nk = t.num_fields
        codes = pa.array([rng.randrange(nk) for _ in range(length)], pa.int8())
        names = [t.field(i).name for i in range(nk)]
        if t.mode == "sparse":
            kids = [random_array(t.field(i).type, length, rng) for i in range(nk)]
            return pa.UnionArray.from_sparse(codes, kids, names)
        counts = [0] * nk
        offsets = []
        for c in codes.to_pylist():
            offsets.append(counts[c])
            counts[c] += 1
        kids = [random_array(t.field(i).type, counts[i], rng) for i in range(nk)]
        return pa.UnionArray.from_dense(codes, pa.array(offsets, pa.int32()), kids, names)
    values = [None if nulls and rng.random() < 0.2 else _scalar(t, rng) for _ in range(length)]
    return pa.array(values, t)


@st.composite
def random_tables(draw):
    ncols = draw(st.integers(0, 4))
    types = [draw(_type_strategy()) for _ in range(ncols)]
    nchunks = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32))
    rng = random.Random(seed)
    in_pool = draw(st.booleans())
    batches = []

    def build():
        for _ in range(nchunks):
            length = rng.randrange(0, 40)
            cols = [random_array(t, length, rng) for t in types]
            if cols and rng.random() < 0.5 and length > 2:
                off = rng.randrange(length)
                cols = [c.slice(off) for c in cols]
            batches.append(pa.RecordBatch.from_arrays(cols, names=[f"c{i}" for i in range(ncols)])
                           if cols else pa.RecordBatch.from_pydict({}))
        return pa.Table.from_batches(batches)
    if in_pool:
        with z.scope():
            return build(), in_pool
    return build(), in_pool


# ZERROW_HYPOTHESIS_SCALE=10 for a long run
HYP_SCALE = int(os.environ.get("ZERROW_HYPOTHESIS_SCALE", "1"))
HYP = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


@settings(max_examples=60 * HYP_SCALE, **HYP)
@given(random_tables())
def test_random_tables_roundtrip(drawn):
    tbl, in_pool = drawn
    with z.share(tbl) as s:
        if in_pool:
            assert s.bytes_copied == 0
        got = z.attach(s.descriptor, s.fds, validate_full=True)
    assert_same(got, tbl)


@settings(max_examples=20 * HYP_SCALE, **HYP)
@given(random_tables())
def test_random_tables_across_process(echo, drawn):
    tbl, _ = drawn
    info, back = _through(echo, tbl)
    assert_same(back, tbl)
    assert info["types"] == [str(f.type) for f in tbl.schema]
