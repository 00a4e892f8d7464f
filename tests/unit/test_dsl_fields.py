"""The DSL's layer above one-statement-one-instruction: named fields of construct layouts on
pointers and stack slots, int subclasses as immediates, network-order loads and stores, and
errors that end at the user's line."""
import enum
import traceback

import construct as c
import pytest

from pybpf import consts
from pybpf.asm import Program
from pybpf.asm.insn import make
from pybpf.asm.isa import Kind, row
from pybpf.errors import AssemblerError, LayoutError, verifier_hint
from pybpf.layout import offsetof
from pybpf.uapi import UpdateFlags

EVENT = c.Struct(
    "pid" / c.Int32ul,
    "delta" / c.Int16sl,
    "port" / c.Int16ub,  # network order
    "comm" / c.Bytes(16),
    "sock" / c.Struct("family" / c.Int16ul, c.Padding(6), "cookie" / c.Int64ul),
    "hist" / c.Array(4, c.Int32ul),
)


def text(p):
    return [line.split(": ", 1)[1] for line in str(p).splitlines()]


def test_named_fields_on_a_pointer_load_and_store():
    p = Program()
    ev = p.ptr(p.r6, EVENT)
    ev.pid = p.r0
    ev["delta"] = -2
    p.r1 = ev.pid
    p.r2 = ev.sock.cookie
    ev.hist[2] = p.r3
    p.r4 = ev["hist"][3]
    p.r5 = ev.addr("comm")
    p.r5 = ev.comm  # a struct or array field assigned to a register is its address
    assert text(p) == [
        "(63) *(u32 *)(r6 +0) = r0",
        "(6a) *(u16 *)(r6 +4) = -2",
        "(61) r1 = *(u32 *)(r6 +0)",
        "(79) r2 = *(u64 *)(r6 +32)",
        "(63) *(u32 *)(r6 +48) = r3",
        "(61) r4 = *(u32 *)(r6 +52)",
        "(bf) r5 = r6", "(07) r5 += 8",
        "(bf) r5 = r6", "(07) r5 += 8",
    ]


def test_named_fields_on_a_stack_slot():
    p = Program()
    val = p.stack.alloc(EVENT)
    assert val.size == EVENT.sizeof() == 56
    val.pid = 1
    val.sock.family = p.r1
    val.hist[0] += p.r2  # atomic add on the field
    p.r1 = val.addr("comm")
    p.r2 = val.sock  # address of a nested struct
    assert val.sock.size == 16 and val.comm.offset == val.offset + 8
    assert text(p) == [
        "(62) *(u32 *)(r10 -56) = 1",
        "(6b) *(u16 *)(r10 -32) = r1",
        "(c3) lock *(u32 *)(r10 -16) += r2",
        "(bf) r1 = r10", "(07) r1 += -48",
        "(bf) r2 = r10", "(07) r2 += -32",
    ]


def test_field_errors_name_the_line():
    p = Program()
    ev = p.ptr(p.r6, EVENT)
    with pytest.raises(AssemblerError, match=r"test_dsl_fields.py:\d+: layout has no field 'nope'"):
        p.r1 = ev.nope
    with pytest.raises(AssemblerError, match="'comm' is 16 bytes of struct or array"):
        ev.comm = p.r1
    with pytest.raises(AssemblerError, match=r"'hist\[4\]|the array has 4 elements"):
        p.r1 = ev.hist[4]
    with pytest.raises(AssemblerError, match="has no layout"):
        p.r1 = p.stack.alloc(8).count


def test_arithmetic_on_memory_is_an_assembler_error_at_the_line():
    p = Program()
    slot = p.stack.alloc(16)
    ptr = p.ptr(p.r1, EVENT)
    for misuse in ("slot + 8", "8 + slot", "slot - 8", "ptr * 2", "ptr.sock + 1"):
        with pytest.raises(AssemblerError, match=r"<string>:1: .* is memory, not a number") as info:
            eval(misuse, {"slot": slot, "ptr": ptr})  # its frame: the line is the text eval runs
        last = traceback.extract_tb(info.value.__traceback__)[-1]
        assert last.filename == "<string>" and last.lineno == 1
    with pytest.raises(AssemblerError) as info:
        slot + 8
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert last.filename == __file__ and last.line == "slot + 8"


def test_assembler_errors_end_at_the_emitting_line():
    p = Program()
    try:
        p.r1 = 1 << 40 if False else "nonsense"
    except AssemblerError as e:
        frames = traceback.extract_tb(e.__traceback__)
    assert frames[-1].filename == __file__ and '"nonsense"' in frames[-1].line
    assert any("dsl.py" in f.filename for f in frames[:-1])  # pybpf's own frames stay, before it


def test_offsetof_reads_nested_fields_and_array_elements():
    assert offsetof(EVENT, "comm") == 8
    assert offsetof(EVENT, "sock.cookie") == 32
    assert offsetof(EVENT, "hist.3") == offsetof(EVENT, "hist[3]") == 52
    with pytest.raises(LayoutError, match="no field 'sock.nope'"):
        offsetof(EVENT, "sock.nope")


class Color(enum.IntEnum):
    RED = 3


def test_int_subclasses_are_immediates_everywhere():
    p = Program()
    p.r4 = UpdateFlags.NOEXIST
    p.r4 += Color.RED
    p.r1.u32[0] = consts.XDP_PASS
    slot = p.stack.alloc(4)
    p.call("map_update_elem", p.r1, slot, slot, UpdateFlags.EXIST)
    with p.If(p.r0 == Color.RED):
        p.exit(consts.XDP_DROP)
    p.exit(Color.RED)
    assert "r4 = 1" in text(p)[0] and "r4 = 2" in " ".join(text(p)) and "if r0 != 0x3" in " ".join(text(p))
    assert text(p)[-2:] == ["(b7) r0 = 3", "(95) exit"]


def test_network_order_loads_and_stores():
    p = Program()
    p.r5 = p.r2.be16[12]
    p.r2.be32[0] = 0x0A000001
    p.r2.be16[2] = p.r3
    ev = p.ptr(p.r6, EVENT)
    p.r1 = ev.port  # Int16ub: swapped to host order
    ev.port = 8080
    assert text(p) == [
        "(69) r5 = *(u16 *)(r2 +12)", "(dc) r5 = be16 r5",
        "(62) *(u32 *)(r2 +0) = 16777226",
        "(dc) r3 = be16 r3", "(6b) *(u16 *)(r2 +2) = r3", "(dc) r3 = be16 r3",
        "(69) r1 = *(u16 *)(r6 +6)", "(dc) r1 = be16 r1",
        "(6a) *(u16 *)(r6 +6) = 36895",  # 0x901f: 8080 in network order
    ]
    with pytest.raises(AssemblerError, match="host order"):
        p.r0.be32[0] += p.r1
    with pytest.raises(AssemblerError, match="does not fit be16"):
        p.r2.be16[0] = 0x10000


def test_consts_match_the_kernel_abi():
    assert (consts.XDP_ABORTED, consts.XDP_DROP, consts.XDP_PASS, consts.XDP_TX, consts.XDP_REDIRECT) == (0, 1, 2, 3, 4)
    assert (consts.TC_ACT_OK, consts.TC_ACT_SHOT, consts.TC_ACT_UNSPEC) == (0, 2, -1)
    assert (consts.ETH_P_IP, consts.ETH_P_IPV6, consts.ETH_P_ARP, consts.ETH_HLEN) == (0x0800, 0x86DD, 0x0806, 14)
    assert (consts.IPPROTO_TCP, consts.IPPROTO_UDP, consts.IPPROTO_ICMPV6) == (6, 17, 58)
    assert (consts.BPF_ANY, consts.BPF_NOEXIST, consts.BPF_EXIST, consts.BPF_F_LOCK) == (
        UpdateFlags.ANY, UpdateFlags.NOEXIST, UpdateFlags.EXIST, UpdateFlags.F_LOCK)
    assert consts.BPF_F_CURRENT_CPU == 0xFFFFFFFF


@pytest.mark.parametrize("log, hint", [
    ("0: (79) r0 = *(u64 *)(r0 +0)\nR0 invalid mem access 'map_value_or_null'\nprocessed 6 insns", "p.r0 != 0"),
    ("R2 !read_ok\n", "calls clobber r1-r5"),
    ("invalid access to packet, off=0 size=2, R2(id=0,off=0,r=0)\n", "data_end"),
    ("invalid read from stack off -8+0 size 8\n", "slot.zero()"),
    ("something new\n", None),
])
def test_common_rejections_get_a_hint(log, hint):
    found = verifier_hint(log)
    assert (found is None) if hint is None else (hint in found)


def test_layout_walk_sees_through_construct_wrappers():
    aligned = c.Struct("a" / c.Int8ul, "b" / c.Aligned(4, c.Struct("x" / c.Int16ul)), "t" / c.Array(2, c.Int16ul))
    p = Program()
    v = p.ptr(p.r1, aligned)
    p.r0 = v.b.x
    p.r0 = v.t[1]
    assert [i.off for i in p.insns] == [1, 7]
    assert p.insns[0] == make(row(Kind.LDX, None, 16), 0, 1, 1)


class FakeTask:
    """A kernel struct as the DSL sees one (pybpf.kernel_types.BtfStruct answers the same way)."""
    name = "task_struct"
    FIELDS = {"tgid": (1268, 4, True), "comm": (1752, 16, False), "files": (1300, 8, False)}

    def sizeof(self):
        return 4096

    def field(self, path):
        from pybpf.asm import FieldInfo
        if path == "real_parent":
            return FieldInfo(1280, 8, pointee=self)
        offset, size, signed = self.FIELDS[path]
        return FieldInfo(offset, size, signed, scalar=path != "comm")


def test_pointer_chains_probe_or_load():
    p = Program(cpu="v4")
    p.r7 = p.kernel(p.r6, FakeTask()).real_parent.tgid
    probe = text(p)
    assert probe == [
        "(bf) r3 = r6", "(07) r3 += 1280", "(bf) r1 = r10", "(07) r1 += -8", "(b7) r2 = 8",
        "(85) call bpf_probe_read_kernel#113", "(79) r7 = *(u64 *)(r10 -8)",
        "(bf) r3 = r7", "(07) r3 += 1268", "(bf) r1 = r10", "(07) r1 += -8", "(b7) r2 = 4",
        "(85) call bpf_probe_read_kernel#113", "(81) r7 = *(s32 *)(r10 -8)",
    ]
    p = Program(cpu="v4")
    task = p.kernel(p.r6, FakeTask(), trusted=True)
    p.r7 = task.real_parent.real_parent.tgid
    p.r8 = task.comm  # an array: its address
    assert text(p) == ["(79) r7 = *(u64 *)(r6 +1280)", "(79) r7 = *(u64 *)(r7 +1280)",
                       "(81) r7 = *(s32 *)(r7 +1268)", "(bf) r8 = r6", "(07) r8 += 1752"]


def test_a_chain_argument_is_read_before_the_others():
    p = Program()
    buf = p.stack.alloc(16)
    p.read_kernel_str(buf, p.kernel(p.r6, FakeTask()).real_parent.comm)
    calls = [line for line in text(p) if "call" in line]
    assert calls == ["(85) call bpf_probe_read_kernel#113", "(85) call bpf_probe_read_kernel_str#115"]
    assert text(p)[-4:-1] == ["(bf) r1 = r10", "(07) r1 += -16", "(b7) r2 = 16"]


def test_chain_misuse_names_the_line():
    p = Program()
    task = p.kernel(p.r6, FakeTask())
    with pytest.raises(AssemblerError, match=r"test_dsl_fields.py:\d+: .*4-byte value, not a struct"):
        p.r1 = task.tgid.x
    with pytest.raises(AssemblerError, match="read-only"):
        task.tgid = 1
    with pytest.raises(AssemblerError, match="starts at a register"):
        p.kernel(p.stack.alloc(8), FakeTask())
    with pytest.raises(AssemblerError, match="one attach target"):
        Program(tracepoint="a:b", raw_tracepoint="b")


def test_expressions_nest_and_borrow_a_callee_saved_register():
    p = Program()
    ev = p.ptr(p.r1, c.Struct("a" / c.Int32ul, "b" / c.Int64ul))
    p.r0 = (p.r2 + p.r3) * 2
    p.r0 = ev.a + 1
    p.r0 = (p.r2 + p.r3) * (p.r4 - 1)  # the right side needs a register of its own: r9
    p.r0 = ev.a + ev.b  # r9 again: only the borrower wrote it
    p.r2 = p.r3 - (p.r2 + 1)
    assert text(p) == [
        "(bf) r0 = r2", "(0f) r0 += r3", "(27) r0 *= 2",
        "(61) r0 = *(u32 *)(r1 +0)", "(07) r0 += 1",
        "(bf) r9 = r4", "(17) r9 -= 1", "(bf) r0 = r2", "(0f) r0 += r3", "(2f) r0 *= r9",
        "(79) r9 = *(u64 *)(r1 +4)", "(61) r0 = *(u32 *)(r1 +0)", "(0f) r0 += r9",
        "(bf) r9 = r2", "(07) r9 += 1", "(bf) r2 = r3", "(1f) r2 -= r9",
    ]


def test_let_lends_registers_the_code_does_not_use_and_says_when_none_is_left():
    p = Program()
    p.r9 = 1  # the user's: never lent
    with p.let(2) as (a, b):
        assert (a.n, b.n) == (8, 7)
        with p.let() as c_:
            assert c_.n == 6
            with pytest.raises(AssemblerError, match=r"test_dsl_fields.py:\d+: no free callee-saved register"):
                with p.let():
                    pass
        p.r0 = a
    with p.let() as again:
        assert again.n == 8
    p.r8 = 2  # the user writes r8 now: no longer lendable
    with p.let() as third:
        assert third.n == 7


def test_a_field_named_like_a_views_own_attribute_is_refused_by_attribute_and_stored_by_item():
    """`slot.size = r` on a layout with a field `size` would quietly replace the slot's size."""
    layout = c.Struct("size" / c.Int32ul, "layout" / c.Int32ul)
    p = Program("own", prog_type="socket_filter")
    slot, ptr = p.stack.alloc(layout), p.ptr(p.r6, layout)
    for view, name in ((slot, "size"), (ptr, "layout")):
        with pytest.raises(AssemblerError, match=rf"'{name}' is the view's own attribute.*v\['{name}'\]") as err:
            setattr(view, name, p.r7)
        assert "test_dsl_fields.py:" in err.value.where  # the line that wrote it
    slot["size"] = p.r7
    ptr["layout"] = p.r7
    assert slot.size == 8 and [i.op.name for i in p.insns[-2:]] == ["stxw", "stxw"]
