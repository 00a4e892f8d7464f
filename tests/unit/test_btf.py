"""pybpf.btf without the kernel: blobs made here, by hand and by BtfBuilder.

The hand-made blob is packed with struct.pack straight from uapi btf.h, not
through pybpf's tables, so the parser is checked against an independent
encoder; the builder is then checked by reading its output back.
"""
import os
import struct
import subprocess
import sys

import construct
import pytest
from construct import (Array, Bytes, BytesInteger, Enum, Float32l, GreedyBytes, Int8sl, Int8ul, Int16sl,
                       Int16ub, Int32sl, Int32ul, Int64sl, Int64ul, Padding, Struct)
from hypothesis import given, settings, strategies as st

from pybpf import btf as btfmod
from pybpf.btf import INT_SIGNED, KIND, RECORDS, Btf, BtfBuilder, map_btf
from pybpf.errors import BpfError, FeatureUnavailable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Blob:
    """A tiny independent BTF writer: raw records in, bytes out."""

    def __init__(self):
        self.types, self.strings = [], bytearray(b"\0")

    def s(self, text):
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, kind, name, size_or_type, vlen=0, kflag=0, tail=b""):
        info = kflag << 31 | KIND[kind] << 24 | vlen
        self.types.append(struct.pack("<III", self.s(name) if name else 0, info, size_or_type) + tail)
        return len(self.types)

    def bytes(self):
        types = b"".join(self.types)
        return struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings)) \
            + types + bytes(self.strings)


@pytest.fixture(scope="module")
def hand():
    """Every kind, with both bitfield encodings and anonymous struct/union nesting."""
    b = Blob()
    u32 = b.add("int", "unsigned int", 4, tail=struct.pack("<I", 32))                        # 1
    u8 = b.add("int", "unsigned char", 1, tail=struct.pack("<I", 8))                         # 2
    s16 = b.add("int", "short", 2, tail=struct.pack("<I", INT_SIGNED << 24 | 16))            # 3
    bf3 = b.add("int", "unsigned int", 4, tail=struct.pack("<I", 4 << 16 | 3))               # 4: kflag-0 bitfield
    ptr = b.add("ptr", None, 0)                                                              # 5: void *
    arr = b.add("array", None, 0, tail=struct.pack("<III", u8, u32, 16))                     # 6: u8[16]
    cst = b.add("const", None, u32)                                                          # 7
    vol = b.add("volatile", None, cst)                                                       # 8
    res = b.add("restrict", None, ptr)                                                       # 9
    tag = b.add("type_tag", "user", vol)                                                     # 10
    tdef = b.add("typedef", "u32_t", tag)                                                    # 11
    anon_u = b.add("union", None, 4, 2, tail=struct.pack("<III", b.s("port"), s16, 0)
                   + struct.pack("<III", b.s("addr"), u32, 0))                               # 12
    anon_s = b.add("struct", None, 8, 2, tail=struct.pack("<III", 0, anon_u, 0)
                   + struct.pack("<III", b.s("hash"), u32, 32))                              # 13
    inner = b.add("struct", "inner", 4, 3, kflag=1,
                  tail=struct.pack("<III", b.s("lo"), u32, 5 << 24 | 0)
                  + struct.pack("<III", b.s("hi"), u32, 3 << 24 | 5)
                  + struct.pack("<III", b.s("rest"), u32, 24 << 24 | 8))                     # 14
    b.add("struct", "outer", 48, 6,
          tail=struct.pack("<III", b.s("a"), tdef, 0)
          + struct.pack("<III", 0, anon_s, 32)
          + struct.pack("<III", b.s("in"), inner, 96)
          + struct.pack("<III", b.s("name"), arr, 128)
          + struct.pack("<III", b.s("flags"), bf3, 256)
          + struct.pack("<III", b.s("p"), res, 320))                                         # 15
    b.add("enum", "colour", 4, 2, kflag=1, tail=struct.pack("<Ii", b.s("RED"), -1) + struct.pack("<Ii", b.s("BLUE"), 7))
    b.add("enum64", "big", 8, 1, tail=struct.pack("<III", b.s("HUGE"), 1, 2))               # 17
    b.add("fwd", "later", 0, kflag=1)                                                        # 18
    proto = b.add("func_proto", None, u32, 2, tail=struct.pack("<II", b.s("x"), u32) + struct.pack("<II", 0, 0))
    b.add("func", "do_thing", proto, vlen=1)                                                 # 20
    var = b.add("var", "counter", u32, tail=struct.pack("<I", 1))                            # 21
    b.add("datasec", ".bss", 4, 1, tail=struct.pack("<III", var, 0, 4))                      # 22
    b.add("float", "double", 8)                                                              # 23
    b.add("decl_tag", "kfunc", 20, tail=struct.pack("<i", -1))                               # 24
    b.add("struct", "outer", 4, 0)                                                           # 25: same name again
    b.add("typedef", "colour", 16)                                                           # 26: name shared with enum
    return Btf.from_bytes(b.bytes())


def test_records_and_construct_layouts_agree():
    for name, layout in btfmod.LAYOUTS.items():
        fmt = btfmod._FMT[name]
        assert layout.sizeof() == fmt.size
        assert [sc.name for sc in layout.subcons] == [field for field, _ in RECORDS[name]]
        sample = bytes(range(1, fmt.size + 1))
        assert tuple(layout.parse(sample).values())[1:] == fmt.unpack(sample)
    for kind, (name, tail, item) in enumerate(btfmod.KINDS):
        assert btfmod._FIXED_WORDS[kind] * 4 == 12 + (btfmod.LAYOUTS[tail].sizeof() if tail else 0)
        assert btfmod._ITEM_WORDS[kind] * 4 == (btfmod.LAYOUTS[item].sizeof() if item else 0)


def test_every_kind_decodes(hand):
    t = hand.type_by_id
    assert (t(1).kind, t(1).name, t(1).size, t(1).bits, t(1).encoding) == ("int", "unsigned int", 4, 32, 0)
    assert t(3).encoding == INT_SIGNED
    assert (t(4).bit_offset, t(4).bits) == (4, 3)
    assert t(5).kind == "ptr" and t(5).type == 0
    assert (t(6).type, t(6).index_type, t(6).nelems) == (2, 1, 16)
    assert [t(i).kind for i in (7, 8, 9, 10, 11)] == ["const", "volatile", "restrict", "type_tag", "typedef"]
    assert t(10).name == "user"
    assert t(13).members[0].name == "" and t(12).kind == "union"
    assert t(14).kind_flag == 1 and t(14).members[1] == ("hi", 1, 5, 3)
    assert t(16).values == {"RED": -1, "BLUE": 7} and t(16).signed
    assert t(17).values == {"HUGE": 2 << 32 | 1} and not t(17).signed
    assert t(18).kind == "fwd" and t(18).kind_flag == 1
    assert t(19).params == (("x", 1), ("", 0))
    assert (t(20).kind, t(20).linkage, t(20).type) == ("func", "global", 19)
    assert (t(21).linkage, t(22).secinfos) == ("global", ((21, 0, 4),))
    assert (t(23).kind, t(23).size) == ("float", 8)
    assert (t(24).kind, t(24).type, t(24).component_idx) == ("decl_tag", 20, -1)
    assert hand.type_by_id(0).kind == "void"
    assert len(hand) == 27


def test_resolve_and_sizeof(hand):
    assert hand.resolve(11).id == 1            # typedef -> type_tag -> volatile -> const -> int
    assert hand.resolve(hand.type_by_id(9)).kind == "ptr"
    assert [hand.sizeof(i) for i in (11, 5, 6, 15, 16, 17, 23)] == [4, 8, 16, 48, 4, 8, 8]
    assert hand.sizeof("u32_t") == 4
    with pytest.raises(BpfError, match="has no size"):
        hand.sizeof(19)


def test_field_through_anonymous_members_and_bitfields(hand):
    assert hand.field("outer", "a")[:4] == (0, 32, 0, 4)
    assert hand.field("outer", "port")[:4] == (32, 16, 4, 2)     # anon struct -> anon union
    assert hand.field("outer", "addr")[:4] == (32, 32, 4, 4)
    assert hand.field("outer", "hash")[:4] == (64, 32, 8, 4)
    hi = hand.field("outer", "in.hi")                          # kind_flag bitfield
    assert hi[:4] == (96 + 5, 3, 12, 4) and hi.is_bitfield
    flags = hand.field("outer", "flags")                        # kind_flag 0: width in the INT
    assert flags[:4] == (256 + 4, 3, 32, 4) and flags.is_bitfield
    name = hand.field("outer", "name")
    assert name[:4] == (128, 128, 16, 16) and not name.is_bitfield
    assert hand.field(hand.find("outer", "struct"), "p").type.kind == "restrict"


def test_lookup_errors(hand):
    with pytest.raises(FeatureUnavailable, match="no field 'in.nope'"):
        hand.field("outer", "in.nope")
    with pytest.raises(BpfError, match="outer.a is a int"):
        hand.field("outer", "a.b")
    with pytest.raises(FeatureUnavailable, match="no struct named 'missing'"):
        hand.find("missing", "struct")
    with pytest.raises(BpfError, match="unknown kind 'structure'"):
        hand.find("outer", "structure")
    with pytest.raises(BpfError, match="no type id 99"):
        hand.type_by_id(99)
    with pytest.raises(FeatureUnavailable, match="no GREEN"):
        hand.enum_value("colour", "GREEN")
    with pytest.raises(FeatureUnavailable, match="no func"):
        hand.func_id("counter")


def test_find_by_kind_among_same_names(hand):
    assert hand.find("outer").id == 15                         # lowest id first
    assert hand.find("colour").kind == "enum"
    assert hand.find("colour", "typedef").id == 26
    assert hand.enum_value("colour", "RED") == -1
    assert hand.func_id("do_thing") == 20
    assert hand.find(".bss", "datasec").vlen == 1


def _blob(**changes):
    b = Blob()
    b.add("int", "int", 4, tail=struct.pack("<I", 32))
    data = bytearray(b.bytes())
    for offset, value in changes.items():
        data[int(offset[1:])] = value
    return bytes(data)


@pytest.mark.parametrize("data,message", [
    (b"\x9f\xeb", "shorter than"),
    (b"\xeb\x9f" + _blob()[2:], "other byte order"),
    (_blob(b2=2), "version 2"),
    (_blob(b4=8), "header length 8"),
    (_blob(b12=200), "past the"),
    (_blob(b31=0x7f), "unknown type kind"),                  # kind byte of type 1
    (_blob(b31=3), "runs past the end"),                     # an ARRAY needs 12 more bytes
    (_blob()[:-1] + b"x", "does not end with NUL"),
])
def test_bad_blobs_fail_with_one_line(data, message):
    with pytest.raises(BpfError, match=message) as err:
        Btf.from_bytes(data).type_by_id(1)
    assert "\n" not in str(err.value)


def test_construction_is_lazy_and_import_is_light():
    btf = Btf.from_bytes(_blob())
    assert btf._offsets is None                             # nothing walked yet
    btf.find("int")
    assert btf._offsets is not None
    out = subprocess.run([sys.executable, "-c", "import sys, pybpf.btf; print(sorted(m for m in "
                          "('construct', 'cffi', 'pybpf.btf_build') if m in sys.modules))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- builder ----------------------------------------------------------------------

def test_builder_round_trip_all_kinds():
    b = BtfBuilder()
    i32 = b.add_int("int", 4, encoding=INT_SIGNED)
    u64 = b.add_int("u64", 8)
    arr = b.add_array(u64, 3)
    s = b.add_struct("pair", 28, [("a", i32, 0), ("b", arr, 32), ("lo", i32, 0, 4)])
    u = b.add_struct("", 8, [("x", u64, 0), ("y", i32, 0)], kind="union")
    e = b.add_enum("mode", {"OFF": 0, "ON": 1, "BIG": 0xFFFFFFFF})
    td = b.add_typedef("pair_t", s)
    proto = b.add_func_proto(i32, [("p", b.add_ptr(td)), ("", 0)])
    f = b.add_func("handle", proto, "global")
    v = b.add_var("total", u64, "static")
    ds = b.add_datasec(".data", 8, [(v, 0, 8)])
    fl = b.add_float("float", 4)
    back = Btf.from_bytes(b.encode())
    assert back.find("pair").members == (("a", i32, 0, 0), ("b", arr, 32, 0), ("lo", i32, 0, 4))
    assert back.type_by_id(s).kind_flag == 1
    assert back.type_by_id(u).kind == "union" and back.type_by_id(u).name == ""
    assert back.type_by_id(e).values == {"OFF": 0, "ON": 1, "BIG": 0xFFFFFFFF}
    assert back.type_by_id(arr).nelems == 3 and back.sizeof(arr) == 24
    assert back.resolve(td).id == s
    assert back.type_by_id(proto).params[1] == ("", 0)
    assert (back.func_id("handle"), back.type_by_id(f).linkage) == (f, "global")
    assert back.type_by_id(v).linkage == "static" and back.type_by_id(ds).secinfos == ((v, 0, 8),)
    assert back.type_by_id(fl).kind == "float"
    assert back.field("pair", "lo")[:4] == (0, 4, 0, 4)
    assert back.find("pair_t").kind == "typedef"


@pytest.mark.parametrize("call,message", [
    (lambda b: b.add_int("x", 3), "size 3"),
    (lambda b: b.add_ptr(42), "type id 42 does not exist"),
    (lambda b: b.add_typedef("not valid", 0), "not a valid identifier"),
    (lambda b: b.add_typedef("", 0), "needs a name"),
    (lambda b: b.add_func("f", 1, "weird"), "linkage 'weird'"),
    (lambda b: b.add_enum("e", {"A": 1 << 33}), "does not fit 32 bits"),
    (lambda b: b.add_struct("s", 4, [("a", 1, 1 << 25)]), "out of range"),
    (lambda b: b.add_struct("s", 4, [], kind="enum"), "not struct or union"),
])
def test_builder_rejects_bad_input(call, message):
    b = BtfBuilder()
    b.add_int("int", 4)
    with pytest.raises(BpfError, match=message):
        call(b)


LAYOUT = Struct(
    "pid" / Int32ul, "comm" / Bytes(16), Padding(4),
    "inner" / Struct("a" / Int16sl, "b" / Int8ul, Padding(1)),
    "ports" / Array(2, Int16ub), "f" / Float32l, "state" / Enum(Int8ul, up=1), "s24" / BytesInteger(3),
    "n" / Array(2, Struct("x" / Int8sl, "y" / Int64sl)),
)


def test_types_for_layout_mirrors_construct_offsets():
    data, key_id, value_id = map_btf(LAYOUT, Int64ul, "rec", "count")
    back = Btf.from_bytes(data)
    assert back.sizeof(key_id) == LAYOUT.sizeof() and back.sizeof(value_id) == 8
    assert back.type_by_id(value_id).kind == "typedef"
    assert [(m.name, m.offset_bits // 8) for m in back.find("rec").members] == [
        ("pid", 0), ("comm", 4), ("inner", 24), ("ports", 28), ("f", 32), ("state", 36), ("s24", 37), ("n", 40)]
    assert back.field("rec", "inner.b").byte_offset == 26
    assert back.resolve(back.field("rec", "comm").type).nelems == 16
    assert back.type_by_id(back.field("rec", "inner.a").type.id).encoding == INT_SIGNED
    assert back.sizeof(back.field("rec", "n").type) == 18


@pytest.mark.parametrize("layout,message", [
    (Struct("a" / GreedyBytes), "no fixed size"),
    (Struct(Int32ul), "unnamed"),
    (Struct("a" / construct.BitStruct("x" / construct.Flag, construct.Padding(7))), "cannot describe"),
])
def test_types_for_layout_rejects(layout, message):
    with pytest.raises(BpfError, match=message):
        BtfBuilder().types_for_layout(layout, "bad")


_INTS = [Int8ul, Int8sl, Int16sl, Int16ub, Int32ul, Int32sl, Int64ul, Int64sl]


@st.composite
def layouts(draw, depth=0):
    fields = []
    for i in range(draw(st.integers(1, 5))):
        choice = draw(st.integers(0, 4 if depth < 2 else 2))
        if choice == 0:
            sub = draw(st.sampled_from(_INTS))
        elif choice == 1:
            sub = Bytes(draw(st.integers(1, 9)))
        elif choice == 2:
            fields.append(Padding(draw(st.integers(1, 3))))
            sub = draw(st.sampled_from(_INTS))
        elif choice == 3:
            sub = Array(draw(st.integers(1, 4)), draw(st.sampled_from(_INTS)))
        else:
            sub = draw(layouts(depth + 1))
        fields.append(f"f{i}" / sub)
    return Struct(*fields)


@settings(max_examples=60, deadline=None)
@given(layouts())
def test_random_layouts_round_trip(layout):
    b = BtfBuilder()
    type_id = b.types_for_layout(layout, "top")
    back = Btf.from_bytes(b.encode())
    assert back.sizeof(type_id) == layout.sizeof()
    offset = 0
    for sc in layout.subcons:
        if sc.name:
            got = back.field("top", sc.name)
            assert (got.byte_offset, got.size) == (offset, sc.sizeof())
        offset += sc.sizeof()


def test_split_btf_continues_base_ids_and_strings():
    base_builder = BtfBuilder()
    u32 = base_builder.add_int("u32", 4)
    base_builder.add_struct("sock", 8, [("family", u32, 0), ("port", u32, 32)])
    base = Btf.from_bytes(base_builder.encode())
    split_builder = BtfBuilder(base=base)
    ptr = split_builder.add_ptr(base.find("sock").id)
    mine = split_builder.add_struct("mod_state", 12, [("sk", ptr, 0), ("port", u32, 64)])
    split = Btf.from_bytes(split_builder.encode(), base=base)
    assert (split.start_id, ptr, mine, len(split)) == (3, 3, 4, 5)
    assert split.find("mod_state").id == mine
    assert split.find("sock").id == 2                          # falls through to the base
    assert split.field("mod_state", "port").type.name == "u32"
    assert split.type_by_id(mine).members[1].name == "port"   # string shared with the base
    assert split.resolve(split.type_by_id(ptr).type).name == "sock"


def test_program_btf_records():
    from pybpf.btf_build import FUNC_INFO, LINE_INFO, program_btf

    info = program_btf([("main", 0), ("cb", 4)], [(0, "/x/p.py", 12, "p.r0 = 1"), (4, "/x/p.py", 1 << 23, "")])
    back = Btf.from_bytes(info.data)
    proto = back.type_by_id(back.type_by_id(back.func_id("cb")).type)
    assert back.resolve(proto.type).name == "int" and proto.params == ()
    funcs = [FUNC_INFO.parse(info.func_info[i:i + 8]) for i in range(0, len(info.func_info), 8)]
    assert [(f.insn_off, f.type_id) for f in funcs] == [(0, back.func_id("main")), (4, back.func_id("cb"))]
    lines = [LINE_INFO.parse(info.line_info[i:i + 16]) for i in range(0, len(info.line_info), 16)]
    assert [(l.insn_off, l.line_col >> 10) for l in lines] == [(0, 12), (4, (1 << 22) - 1)]  # clamped
    assert lines[1].line_off == 0 and lines[0].file_name_off == lines[1].file_name_off  # strings once
    assert info.func_info_rec_size == 8 and info.line_info_rec_size == 16


@pytest.mark.parametrize("functions, lines, message", [
    ([("main", 1)], [], "must start at 0"),
    ([("main", 0), ("f", 0)], [], "ascend"),
    ([("main", 0)], [(2, "a", 1, ""), (2, "a", 2, "")], "ascend strictly"),
    ([("main", 0)], [(0, "a", 1, "x\0y")], "NUL"),
    ([("not valid", 0)], [], "not a valid identifier"),
])
def test_program_btf_rejects(functions, lines, message):
    from pybpf.btf_build import program_btf

    with pytest.raises(BpfError, match=message):
        program_btf(functions, lines)
