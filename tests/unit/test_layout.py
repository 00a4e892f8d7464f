"""The fast codec must agree with construct's parse/build on every layout it flattens."""
import construct as c
import pytest
from hypothesis import given, settings, strategies as st

from pybpf.errors import BpfError
from pybpf.layout import ConstructCodec, LayoutError, RawCodec, StructCodec, codec, size_of

INTS = [c.Int8ul, c.Int8sl, c.Int16ul, c.Int16sl, c.Int16ub, c.Int16sb, c.Int32ul, c.Int32sl,
        c.Int32ub, c.Int32sb, c.Int64ul, c.Int64sl, c.Int64ub, c.Int64sb]

ints = st.sampled_from(INTS)
leaves = st.one_of(
    ints,
    st.integers(0, 9).map(c.Bytes),
    st.builds(c.Array, st.integers(0, 4), ints),
)


def structs(children):
    fields = st.lists(st.tuples(st.booleans(), children, st.integers(1, 3)), min_size=1, max_size=6)
    return fields.map(_struct)


def _struct(fields):
    subcons = []
    for i, (pad_before, sub, pad) in enumerate(fields):
        if pad_before:
            subcons.append(c.Padding(pad))
        subcons.append(f"f{i}" / sub)
    return c.Struct(*subcons)


layouts = st.recursive(leaves, structs, max_leaves=12).filter(lambda lay: lay.sizeof() > 0)


@settings(max_examples=300, deadline=None)
@given(layout=layouts, data=st.data())
def test_fast_codec_matches_construct(layout, data):
    fast = codec(layout)
    assert isinstance(fast, StructCodec)
    assert fast.size == layout.sizeof()
    raw = data.draw(st.binary(min_size=fast.size, max_size=fast.size))
    parsed = layout.parse(raw)
    assert fast.decode(raw) == parsed
    assert fast.decode(bytearray(raw)) == parsed
    assert fast.encode(parsed) == layout.build(parsed)
    assert fast.encode(fast.decode(raw)) == layout.build(parsed)


@settings(max_examples=100, deadline=None)
@given(layout=layouts, data=st.data())
def test_decode_many_matches_per_record(layout, data):
    fast = codec(layout)
    count = data.draw(st.integers(0, 5))
    raw = data.draw(st.binary(min_size=fast.size * count, max_size=fast.size * count))
    records = [raw[i * fast.size:(i + 1) * fast.size] for i in range(count)]
    assert fast.decode_many(raw, count) == [layout.parse(r) for r in records]


@given(layout=layouts, extra=st.sampled_from([-1, 1, 7]))
def test_size_mismatch_raises(layout, extra):
    fast = codec(layout)
    size = fast.size + extra
    if size < 0:
        return
    with pytest.raises(LayoutError, match=f"record is {size} bytes, layout wants {fast.size}"):
        fast.decode(bytes(size))


def test_mixed_byte_order_splits_into_segments():
    layout = c.Struct("a" / c.Int32ul, "port" / c.Int16ub, "b" / c.Int16ul)
    fast = codec(layout)
    assert len(fast.segments) == 3
    value = dict(a=1, port=80, b=2)
    assert fast.encode(value) == b"\x01\0\0\0\0\x50\x02\0"
    assert fast.decode(fast.encode(value)) == value


@pytest.mark.parametrize("size,value,raw", [
    (1, 0xAB, b"\xab"),
    (2, 0x0102, b"\x02\x01"),
    (4, 0x01020304, b"\x04\x03\x02\x01"),
    (8, 1, b"\x01" + bytes(7)),
])
def test_int_sizes_are_native_ints(size, value, raw):
    fast = codec(size)
    assert fast.size == size
    assert fast.encode(value) == raw
    assert fast.decode(raw) == value


def test_odd_sizes_are_raw_bytes():
    fast = codec(6)
    assert isinstance(fast, RawCodec)
    assert fast.decode(b"abcdef") == b"abcdef"
    assert fast.decode_many(b"abcdefghijkl", 2) == [b"abcdef", b"ghijkl"]
    with pytest.raises(LayoutError, match="record is 5 bytes, layout wants 6"):
        fast.encode(b"abcde")
    with pytest.raises(LayoutError, match="expected 6 bytes"):
        fast.encode(12)


def test_unflattenable_layouts_fall_back_to_construct():
    layout = c.Struct("kind" / c.Enum(c.Int8ul, tcp=6, udp=17), "n" / c.Int24ul)
    fast = codec(layout)
    assert isinstance(fast, ConstructCodec)
    raw = b"\x06\x01\x02\x03"
    assert fast.decode(raw) == layout.parse(raw)
    assert fast.encode(dict(kind="udp", n=5)) == layout.build(dict(kind="udp", n=5))
    with pytest.raises(LayoutError):
        fast.decode(raw[:3])


def test_bad_values_raise_layout_errors():
    layout = c.Struct("a" / c.Int8ul, "name" / c.Bytes(4), "xs" / c.Array(2, c.Int16ul))
    fast = codec(layout)
    good = dict(a=1, name=b"abcd", xs=[1, 2])
    assert fast.encode(good) == layout.build(good)
    for bad, why in [
        (dict(good, a=256), "0 <= number <= 255"),
        (dict(good, name=b"abc"), "bytes field is 3 bytes, layout wants 4"),
        (dict(good, xs=[1]), "array has 1 items, layout wants 2"),
        ({"a": 1}, "missing field 'name'"),
        (dict(good, a="x"), "cannot encode"),
    ]:
        with pytest.raises(LayoutError, match=why):
            fast.encode(bad)
    assert issubclass(LayoutError, BpfError) and issubclass(LayoutError, ValueError)


def test_size_of():
    assert size_of(c.Struct("a" / c.Int32ul, c.Padding(4))) == 8
    assert size_of(12) == 12
    assert size_of(codec(c.Int16ul)) == 2
    with pytest.raises(LayoutError, match="no fixed size"):
        size_of(c.GreedyBytes)
    with pytest.raises(LayoutError, match="not a layout"):
        codec("int")
    with pytest.raises(LayoutError, match="size must be positive"):
        codec(0)
