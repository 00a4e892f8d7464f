"""The DSL: exact encodings of every construct, source lines, and errors."""
import functools
import sys

import construct as c
import pytest

from pybpf import isa
from pybpf.asm import FuncRef, Program, s16, u32
from pybpf.errors import AssemblerError
from pybpf.insn import Insn, encode
from pybpf.link import link

I = Insn


def K(name, *args, **kw):
    """The immediate form of an ALU or jump instruction."""
    return Insn(isa.lookup(name, "imm"), *args, **kw)


def R(name, *args, **kw):
    """The register form."""
    return Insn(isa.lookup(name, "reg"), *args, **kw)


def here(delta=0):
    """ "test_asm.py:N" of the caller's line (+ delta)."""
    return f"test_asm.py:{sys._getframe(1).f_lineno + delta}"


def linked(p):
    return p.link()


class FakeMap:
    """Stands in for pybpf.maps.Map: the DSL only keeps the reference (the loader reads .fd)."""

    fd = 7


# -- moves and ALU -----------------------------------------------------------------------

def test_moves_pick_the_shortest_correct_encoding():
    p = Program()
    p.r1 = p.r2
    p.r1 = 5
    p.r1 = -1
    p.r1 = 0x80000000  # sign-extending mov would make this negative: mov32 zero-extends
    p.r1 = 1 << 40
    p.r1 = -(1 << 40)
    p.w1 = 0xFFFFFFFF
    p.w1 = p.w2
    p.r1 = p.w2  # a 32-bit source zero-extends
    p.r1.w = 7
    assert p.insns == [
        R("mov", 1, 2), K("mov", 1, imm=5), K("mov", 1, imm=-1),
        K("mov32", 1, imm=-0x80000000), I("lddw", 1, imm=1 << 40),
        I("lddw", 1, imm=-(1 << 40)), K("mov32", 1, imm=-1),
        R("mov32", 1, 2), R("mov32", 1, 2),
        K("mov32", 1, imm=7),
    ]


@pytest.mark.parametrize("stmt, name", [
    ("p.r1 += {}", "add"), ("p.r1 -= {}", "sub"), ("p.r1 *= {}", "mul"), ("p.r1 /= {}", "div"),
    ("p.r1 //= {}", "div"), ("p.r1 %= {}", "mod"), ("p.r1 |= {}", "or"), ("p.r1 &= {}", "and"),
    ("p.r1 ^= {}", "xor"), ("p.r1 <<= {}", "lsh"), ("p.r1 >>= {}", "rsh"),
    ("p.r1.s /= {}", "sdiv"), ("p.r1.s %= {}", "smod"), ("p.r1.s >>= {}", "arsh"),
])
def test_inplace_alu(stmt, name):
    p = Program()
    exec(stmt.format("3"), {"p": p})
    exec(stmt.format("p.r2"), {"p": p})
    exec(stmt.replace("p.r1", "p.w1").format("3"), {"p": p})
    exec(stmt.replace("p.r1", "p.r1.w").format("p.r2"), {"p": p})
    assert p.insns == [K(name, 1, imm=3), R(name, 1, 2), K(name + "32", 1, imm=3), R(name + "32", 1, 2)]


def test_inplace_on_a_bare_name_still_emits_once():
    p = Program()
    r1 = p.r1
    r1 += 1
    r1 += 2
    assert p.insns == [K("add", 1, imm=1), K("add", 1, imm=2)]


def test_explicit_self_move_is_kept():
    p = Program()
    p.w1 = p.w1  # zero-extends r1: a real instruction
    p.w1 += 1
    p.w1 = p.w1
    assert p.insns == [R("mov32", 1, 1), K("add32", 1, imm=1), R("mov32", 1, 1)]


def test_expressions_compute_into_the_destination():
    p = Program()
    p.r1 = p.r2 + 5
    p.r1 = p.r1 << 2
    p.r1 = p.r2 + p.r1  # commutative: add r1, r2
    p.r3 = p.r2.s / 4
    p.w3 = p.r2 & 0xFF
    p.r4 = -p.r5
    p.r4 = -p.r4
    assert p.insns == [
        R("mov", 1, 2), K("add", 1, imm=5), K("lsh", 1, imm=2),
        R("add", 1, 2), R("mov", 3, 2), K("sdiv", 3, imm=4),
        R("mov32", 3, 2), K("and32", 3, imm=0xFF),
        R("mov", 4, 5), I("neg", 4), I("neg", 4),
    ]


def test_expression_that_would_clobber_its_operand_is_refused():
    p = Program()
    with pytest.raises(AssemblerError, match="overwrite r1 before reading it"):
        p.r1 = p.r2 - p.r1


def test_unary_and_width_ops():
    p = Program()
    p.neg(p.r1)
    p.neg(p.w1)
    p.sdiv(p.r1, p.r2)
    p.smod(p.w1, 3)
    p.arsh(p.r1, 7)
    p.bswap(p.r2, 64)
    p.le(p.r2, 16)
    p.be(p.r2, 32)
    p.movsx(p.r1, p.r2, 8)
    p.movsx(p.r1, p.r2, 32)
    p.movsx(p.w1, p.w2, 16)
    assert p.insns == [
        I("neg", 1), I("neg32", 1), R("sdiv", 1, 2), K("smod32", 1, imm=3),
        K("arsh", 1, imm=7), I("bswap64", 2), I("le16", 2), I("be32", 2),
        I("movsx864", 1, 2), I("movsx3264", 1, 2), I("movsx1632", 1, 2),
    ]
    with pytest.raises(AssemblerError, match="movsx to w1 from 32 bits"):
        p.movsx(p.w1, p.r2, 32)
    with pytest.raises(AssemblerError, match="width must be 16, 32 or 64"):
        p.bswap(p.r1, 8)


# -- memory ------------------------------------------------------------------------------

def test_loads_and_stores():
    p = Program()
    p.r0 = p.r1.u32[4]
    p.r0 = p.r1.u8[-1]
    p.r0 = p.r1.u64[8]
    p.r0 = p.r1.s16[2]  # sign-extending load
    p.r0 = p.r1.s64[0]  # 8 bytes: nothing to extend
    p.r0 = p.mem(p.r1, 6, "u16")
    p.r10.u64[-8] = p.r1
    p.r10.u32[-12] = 7
    p.r10.u8[-13] = 0xFF
    p.r10.u64[-24] = -1
    p.r0 = p.r1.mem(2, s16)
    assert p.insns == [
        I("ldxw", 0, 1, 4), I("ldxb", 0, 1, -1), I("ldxdw", 0, 1, 8), I("ldxsh", 0, 1, 2),
        I("ldxdw", 0, 1, 0), I("ldxh", 0, 1, 6), I("stxdw", 10, 1, -8), I("stw", 10, 0, -12, 7),
        I("stb", 10, 0, -13, 0xFF), I("stdw", 10, 0, -24, -1), I("ldxsh", 0, 1, 2),
    ]


def test_store_immediates_must_fit():
    p = Program()
    with pytest.raises(AssemblerError, match="does not fit"):
        p.r10.u8[-1] = 256
    with pytest.raises(AssemblerError, match="sign-extended 32-bit"):
        p.r10.u64[-8] = 0x80000000


def test_atomics():
    p = Program()
    p.r10.u64[-8] += p.r1
    p.r10.u32[-4] |= p.r1
    p.r1.u64[0] &= p.r2
    p.r1.u64[0] ^= p.r2
    p.atomic_add(p.r1.u64[8], p.r2, fetch=True)
    p.atomic_or(p.r1.u32[8], p.r2, fetch=True)
    p.atomic_and(p.r1.u64[8], p.r2)
    p.atomic_xor(p.r1.u64[8], p.r2, fetch=True)
    p.xchg(p.r1.u64[16], p.r3)
    p.cmpxchg(p.r1.u32[16], p.r3)
    assert p.insns == [
        I("lock_add", 10, 1, -8), I("lock_or32", 10, 1, -4), I("lock_and", 1, 2, 0), I("lock_xor", 1, 2, 0),
        I("lock_fetch_add", 1, 2, 8), I("lock_fetch_or32", 1, 2, 8), I("lock_and", 1, 2, 8),
        I("lock_fetch_xor", 1, 2, 8), I("lock_xchg", 1, 3, 16), I("lock_cmpxchg32", 1, 3, 16),
    ]
    with pytest.raises(AssemblerError, match="operand must be a register"):
        p.r10.u64[-8] += 1
    with pytest.raises(AssemblerError, match="must be 4 or 8 bytes"):
        p.r10.u16[-8] += p.r1


# -- jumps and blocks ----------------------------------------------------------------------

def test_labels_and_conditional_jumps():
    p = Program()
    p.jump_if(p.r1 > 5, "out")
    p.jump_if(p.r1.s < -1, "out")
    p.jump_if(p.w1 == p.w2, "out")
    p.jump_if(p.r1 & 0x10, "out")
    p.jump_if(p.r1, "out")  # r1 != 0
    p.jump_if(5 <= p.r1, "out")  # reflected: r1 >= 5
    p.jump_if(p.w1.s >= 0xFFFFFFFF, "out")
    p.goto("out")
    p.label("out")
    p.exit()
    assert linked(p) == [
        K("jgt", 1, off=7, imm=5), K("jslt", 1, off=6, imm=-1), R("jeq32", 1, 2, 5),
        K("jset", 1, off=4, imm=0x10), K("jne", 1, off=3, imm=0),
        K("jge", 1, off=2, imm=5), K("jsge32", 1, off=1, imm=-1), I("ja", off=0), I("exit"),
    ]
    assert p.insns[-1].label == "out" and p.insns[0].ref == "out"


def test_backward_jump_counts_ld_imm64_slots():
    p = Program()
    p.label("top")
    p.r1 = 1 << 40
    p.goto("top")
    p.exit()
    assert linked(p)[1] == I("ja", off=-3)


def test_if_else():
    p = Program()
    with p.If(p.r1 == 0):
        p.r0 = 1
    with p.Else():
        p.r0 = 2
    p.exit()
    assert linked(p) == [K("jne", 1, off=2), K("mov", 0, imm=1), I("ja", off=1),
                         K("mov", 0, imm=2), I("exit")]


def test_if_elif_else_and_signed_and_32bit_tests():
    p = Program()
    with p.If(p.r1.s > 10):
        p.r0 = 1
    with p.Elif(p.w1 < 3):
        p.r0 = 2
    with p.Else():
        p.r0 = 3
    p.exit()
    assert linked(p) == [
        K("jsle", 1, off=2, imm=10), K("mov", 0, imm=1), I("ja", off=4),
        K("jge32", 1, off=2, imm=3), K("mov", 0, imm=2), I("ja", off=1),
        K("mov", 0, imm=3), I("exit"),
    ]


def test_if_without_else_and_jset_negation():
    p = Program()
    with p.If(p.r1 & 4):  # jset has no inverse: skip over a goto
        p.r0 = 1
    with p.If(~(p.r1 & 4)):  # "bits clear" jumps straight on jset
        p.r0 = 2
    p.exit()
    assert linked(p) == [
        K("jset", 1, off=1, imm=4), I("ja", off=1), K("mov", 0, imm=1),
        K("jset", 1, off=1, imm=4), K("mov", 0, imm=2), I("exit"),
    ]


def test_else_after_a_branch_that_exits_has_no_unreachable_jump():
    p = Program()
    with p.If(p.r1 == 0):
        p.exit(1)
    with p.Else():
        p.r0 = 2
    p.exit()
    assert linked(p) == [K("jne", 1, off=2), K("mov", 0, imm=1), I("exit"),
                         K("mov", 0, imm=2), I("exit")]


def test_nested_if_inside_then_branch_keeps_the_jump_over_else():
    p = Program()
    with p.If(p.r1 == 0):
        with p.If(p.r2 == 0):
            p.exit(1)
    with p.Else():
        p.r0 = 2
    p.exit()
    assert linked(p) == [K("jne", 1, off=4), K("jne", 2, off=2),
                         K("mov", 0, imm=1), I("exit"), I("ja", off=1),
                         K("mov", 0, imm=2), I("exit")]


def test_for_loop_with_break_and_continue():
    p = Program()
    with p.For(p.r6, 1, 101):
        with p.If(p.r6 == 50):
            p.Continue()
        with p.If(p.r6 == 90):
            p.Break()
        p.r0 += p.r6
    p.exit()
    assert linked(p) == [
        K("mov", 6, imm=1), K("jge", 6, off=7, imm=101),
        K("jne", 6, off=1, imm=50), I("ja", off=3),
        K("jne", 6, off=1, imm=90), I("ja", off=3),
        R("add", 0, 6), K("add", 6, imm=1), I("ja", off=-8), I("exit"),
    ]


def test_counting_down_and_while():
    p = Program()
    with p.For(p.r6, 10, 0, -2):
        p.r0 += 1
    with p.While(p.r6 < p.r7):
        p.r6 += 1
    p.exit()
    assert linked(p) == [
        K("mov", 6, imm=10), K("jle", 6, off=3, imm=0), K("add", 0, imm=1),
        K("add", 6, imm=-2), I("ja", off=-4),
        R("jge", 6, 7, 2), K("add", 6, imm=1), I("ja", off=-3), I("exit"),
    ]


def test_long_goto_and_may_goto():
    p = Program()
    p.goto("end", long=True)
    p.may_goto("end")
    p.label("end")
    p.exit()
    assert linked(p) == [I("gotol", imm=1), I("may_goto", off=0), I("exit")]


# -- calls -------------------------------------------------------------------------------------

def test_helper_call_loads_arguments():
    p = Program()
    slot = p.stack.alloc(8)
    m = FakeMap()
    r0 = p.call("map_lookup_elem", m, slot)
    p.r6 = p.call("bpf_ktime_get_ns")
    p.call(6, p.r1, 4)  # trace_printk(fmt, size, ...): by id, variadic
    p.call("map_update_elem", p.r1, p.r2, p.r6, 0)  # already in place: no moves
    assert r0 is p.r0
    assert p.insns == [
        I("ld_map_fd", 1), R("mov", 2, 10), K("add", 2, imm=-8), I("call", imm=1),
        I("call", imm=5), R("mov", 6, 0),
        K("mov", 2, imm=4), I("call", imm=6),
        R("mov", 3, 6), K("mov", 4, imm=0), I("call", imm=2),
    ]
    assert p.insns[0].ref is m and p.maps == [m]


def test_helper_call_errors_name_the_line():
    p = Program()
    line = here(2)
    with pytest.raises(AssemblerError, match="map_lookup_elem takes 2 arguments, got 1") as err:
        p.call("map_lookup_elem", p.r1)
    assert err.value.where == line
    with pytest.raises(AssemblerError, match="unknown BPF helper 'no_such_helper'"):
        p.call("no_such_helper")
    with pytest.raises(AssemblerError, match="argument 2 reads r1, which argument 1 already overwrote"):
        p.call("map_lookup_elem", p.r2, p.r1)
    with pytest.raises(AssemblerError, match="takes 2 or more arguments, got 0"):
        p.call("trace_printk")


def test_subprograms_and_local_calls():
    p = Program()
    p.r1 = 3
    p.call_local("double")
    p.bpf_loop(10, "body", p.r10, 0)
    p.exit()

    with p.function("double"):
        p.r0 = p.r1
        p.r0 += p.r1
        p.exit()

    @p.subprogram
    def body():
        p.exit(0)

    assert isinstance(body, FuncRef) and body.name == "body"
    assert linked(p) == [
        K("mov", 1, imm=3), I("call_local", imm=7),
        K("mov", 1, imm=10), I("ld_func", 2, imm=8), R("mov", 3, 10), K("mov", 4, imm=0),
        I("call", imm=181), I("exit"),
        R("mov", 0, 1), R("add", 0, 1), I("exit"),  # double at slot 9
        K("mov", 0, imm=0), I("exit"),  # body at slot 12
    ]
    assert p.insns[8].label == "double" and p.insns[11].label == "body"
    assert p.functions == [("main", 0), ("double", 9), ("body", 12)]


def test_function_must_end_with_exit_and_not_nest():
    p = Program()
    with pytest.raises(AssemblerError, match="must end with exit"):
        with p.function("f"):
            p.r0 = 1
    p = Program()
    with pytest.raises(AssemblerError, match="outside other blocks"):
        with p.If(p.r1 == 0):
            with p.function("g"):
                p.exit()


def test_kfunc_and_map_value_loads():
    p = Program()
    m = FakeMap()
    p.ld_map_value(p.r1, m, 16)
    p.call_kfunc(1234, 2)
    p.r2 = m
    p.exit()
    assert p.insns == [I("ld_map_value", 1, imm=16 << 32), I("call_kfunc", off=2, imm=1234),
                       I("ld_map_fd", 2), I("exit")]
    assert p.maps == [m]


# -- stack and layouts -------------------------------------------------------------------------

EVENT = c.Struct("pid" / c.Int32ul, "delta" / c.Int16sl, c.Padding(2), "addr" / c.Struct("ip" / c.Int32ub,
                                                                                           "port" / c.Int16ub),
                 c.Padding(2), "ts" / c.Int64ul)


def test_stack_slots_zero_and_address():
    p = Program()
    a = p.stack.alloc(4)
    b = p.stack.alloc(12)
    assert (a.offset, b.offset) == (-8, -24)
    b.zero()
    p.r2 = b
    p.r0 = b.u32[8]
    assert p.insns == [I("stdw", 10, off=-24), I("stw", 10, off=-16), R("mov", 2, 10),
                       K("add", 2, imm=-24), I("ldxw", 0, 10, -16)]
    with pytest.raises(AssemblerError, match="stack frame would be 520 bytes"):
        p.stack.alloc(496)


def test_struct_fields_from_construct_layout():
    p = Program()
    ev = p.stack.alloc(EVENT)
    assert ev.size == 24
    p.r1 = ev.field("pid")
    p.r1 = ev.field("delta")  # Int16sl: sign-extending load
    p.r1 = ev.field("addr.port")  # Int16ub: kept in network order, loaded in host order
    ev.u64[16] = p.r1
    ptr = p.ptr(p.r6, EVENT)
    p.r2 = ptr.field("ts")
    assert p.insns == [I("ldxw", 1, 10, -24), I("ldxsh", 1, 10, -20), I("ldxh", 1, 10, -12), I("be16", 1),
                       I("stxdw", 10, 1, -8), I("ldxdw", 2, 6, 16)]
    with pytest.raises(AssemblerError, match="no field 'nope'"):
        ev.field("nope")


def test_struct_fields_from_any_offset_source():
    from pybpf.btf import Field

    p = Program()
    p.r0 = p.ptr(p.r1, lambda name: {"sport": (12, 2)}[name]).field("sport")
    p.r0 = p.ptr(p.r1, functools.partial(lambda s, n: Field(64, 32, 8, 4, None), "sock")).field("x")

    class Layout:
        def field(self, name):
            return (4, 8, True)

    p.r0 = p.ptr(p.r1, Layout()).field("y")
    assert p.insns == [I("ldxh", 0, 1, 12), I("ldxw", 0, 1, 8), I("ldxdw", 0, 1, 4)]
    with pytest.raises(AssemblerError, match="bitfield"):
        p.ptr(p.r1, lambda n: Field(3, 5, 0, 4, None)).field("bits")
    with pytest.raises(AssemblerError, match="has no layout"):
        p.r1.field("x")


# -- results, sources, errors -----------------------------------------------------------------------

def test_every_instruction_records_the_dsl_line():
    p = Program()
    lines = [here(1), here(2), here(3), here(4), here(5)]
    p.r0 = 0
    with p.If(p.r1 > 2):  # the jump comes from the If line
        p.r0 += 1
    p.call("ktime_get_ns")
    p.exit()
    assert [i.source for i in p.insns] == lines


def test_bytes_and_disassembly():
    p = Program("t", prog_type="socket_filter")
    p.r0 = 1
    p.exit()
    assert p.bytes() == p.encode() == encode(link(p.insns)) == bytes.fromhex("b700000001000000" "9500000000000000")
    assert str(p) == "   0: (b7) r0 = 1\n   1: (95) exit\n"
    assert (p.name, p.prog_type, p.license) == ("t", "socket_filter", "GPL")


def test_errors():
    p = Program()
    line = here(2)
    with pytest.raises(AssemblerError, match="r10 is the read-only frame pointer") as err:
        p.r10 = p.r1
    assert err.value.where == line
    with pytest.raises(AssemblerError, match="read-only"):
        p.r10 += 8
    with pytest.raises(AssemblerError, match="no register r11"):
        p.reg(11)
    assert p.reg(3, 32) is p.w3
    with pytest.raises(AssemblerError, match="sign-extended 32-bit immediate"):
        p.r1 += 1 << 33
    with pytest.raises(AssemblerError, match="use p.If"):
        if p.r1 > 3:
            pass
    with pytest.raises(AssemblerError, match="same width"):
        p.jump_if(p.r1 > p.w2, "x")
    with pytest.raises(AssemblerError, match="not a runtime test"):
        p.If(p.r1 + 1)
    with pytest.raises(AssemblerError, match="cannot assign"):
        p.r1 = "text"
    with pytest.raises(AssemblerError, match="Else without an If"):
        with p.Else():
            pass
    with pytest.raises(AssemblerError, match="label 'a' defined twice"):
        p.label("a")
        p.exit()
        p.label("a")
    with pytest.raises(AssemblerError, match="reserved"):
        p.label(".x")
    with pytest.raises(AssemblerError, match="Break outside a loop"):
        p.Break()


def test_link_errors():
    p = Program()
    p.goto("nowhere"); line = here()  # noqa: E702
    with pytest.raises(AssemblerError, match="unknown label 'nowhere'") as err:
        p.link()
    assert err.value.where == line

    p = Program()
    block = p.If(p.r1 == 0)
    block.__enter__()
    p.exit()
    with pytest.raises(AssemblerError, match="If block is still open"):
        p.link()

    p = Program()
    p.exit()
    p.label("end")
    with pytest.raises(AssemblerError, match="label 'end' marks no instruction"):
        p.link()

    p = Program()
    with p.If(p.r1 == 0):
        p.r0 = 1
    with pytest.raises(AssemblerError, match="a block ends the program"):
        p.link()


def test_jump_out_of_range():
    p = Program()
    with p.If(p.r1 == 0):
        for _ in range(1 << 15):
            p.r0 += 1
    p.exit()
    with pytest.raises(AssemblerError, match="more than a 16-bit offset can hold"):
        p.link()


def test_unknown_access_type():
    p = Program()
    with pytest.raises(AssemblerError, match="unknown access type 'u24'"):
        p.mem(p.r1, 0, "u24")
    assert p.mem(p.r1, 4, "u32").type is u32


def _build_with_open_if(p):
    p.If(p.r1 > 1).__enter__()  # the line an error must name: the block is never closed
    p.exit()


def _build_with_big_stack(p):
    p.r0 = 0
    p.stack.alloc(1000)  # the line an error must name: more than 512 bytes
    p.exit()


@pytest.mark.parametrize("build, marker", [
    (_build_with_open_if, "p.If(p.r1 > 1)"),
    (_build_with_big_stack, "p.stack.alloc(1000)"),
])
def test_errors_name_the_users_line_inside_their_own_functions(build, marker):
    """A DSL call inside a user's function is located at that call, not where the function was called."""
    import inspect

    lines, first = inspect.getsourcelines(build)
    line = first + next(i for i, text in enumerate(lines) if marker in text)
    p = Program()
    with pytest.raises(AssemblerError, match=rf"test_asm\.py:{line}\b"):
        build(p)
        p.link()


# -- cpu targets -------------------------------------------------------------------------------------

def names(p):
    return [i.op.name for i in p.insns]


def test_cpu_v3_lowers_sign_extension_and_byte_swaps():
    p = Program(cpu="v3")
    p.r1 = p.r10.s8[-8]
    p.w2 = p.r10.s16[-8]
    p.movsx(p.r3, p.r1, 32)
    p.movsx(p.w4, p.r1, 8)
    p.bswap(p.r5, 16)
    expected_swap = "be16" if sys.byteorder == "little" else "le16"
    assert names(p) == ["ldxb", "lsh", "arsh", "ldxh", "lsh", "arsh", "mov", "lsh", "arsh", "mov32", "lsh32",
                        "arsh32", expected_swap]
    assert [i.imm for i in p.insns if i.op.name.startswith(("lsh", "arsh"))] == [56, 56, 48, 48, 32, 32, 24, 24]


def test_cpu_v4_is_the_default_and_keeps_v4_instructions():
    p = Program()
    p.r1 = p.r10.s8[-8]
    p.movsx(p.r3, p.r1, 32)
    p.bswap(p.r5, 16)
    assert p.cpu == "v4" and names(p) == ["ldxsb", "movsx3264", "bswap16"]


@pytest.mark.parametrize("build, what", [
    (lambda p: p.sdiv(p.r1, 3), "sdiv"),
    (lambda p: setattr(p, "r1", p.r1.s % 3), "smod"),
    (lambda p: p.goto("far", long=True), "gotol"),
])
def test_cpu_v3_refuses_what_it_cannot_lower(build, what):
    p = Program(cpu="v3")
    with pytest.raises(AssemblerError, match=f"{what}.* is a cpu v4 instruction .Linux 6.6.; this program targets cpu v3"):
        build(p)


def test_unknown_cpu_is_refused():
    with pytest.raises(AssemblerError, match="cpu 'v5': expected one of v3, v4 or auto"):
        Program(cpu="v5")
