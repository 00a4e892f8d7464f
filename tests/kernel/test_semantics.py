"""Instruction semantics in the real kernel, through BPF_PROG_TEST_RUN.

Each case is a body that leaves its result in r0. The harness wraps it in an
XDP program that stores the full 64-bit r0 into the first 8 packet bytes, so
data_out shows every bit (zero-extension included), not just the 32-bit
retval. Expected values come from the small two's-complement model below,
written from RFC 9669, and from hand-computed literals for the edge cases.
"""
import struct

import pytest

from pybpf import isa
from pybpf.insn import Insn
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.uapi import MapType
from tests.conftest import require, uses_cpu_v4

MASK32 = (1 << 32) - 1
MASK64 = (1 << 64) - 1
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
INT32_MIN = -(1 << 31)


def mask(bits):
    return (1 << bits) - 1


def sext(value, bits):
    """The two's-complement signed value of the low `bits` bits."""
    value &= mask(bits)
    return value - (1 << bits) if value >> (bits - 1) else value


def trunc_div(a, b):
    """C division: rounds toward zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def reg(name):
    return isa.lookup(name, "reg")


def lddw(dst, value):
    return Insn("lddw", dst, imm=value & MASK64)


# r6 holds the context through the body; the epilogue writes r0 to data[0..8] and returns XDP_PASS.
PROLOGUE = [Insn(reg("mov"), 6, 1)]
EPILOGUE = [
    Insn("ldxw", 2, 6, 0),  # data
    Insn("ldxw", 3, 6, 4),  # data_end
    Insn(reg("mov"), 4, 2),
    Insn("add", 4, 0, 0, 8),
    Insn(reg("jgt"), 4, 3, 1),
    Insn("stxdw", 2, 0, 0),
    Insn("mov", 0, 0, 0, 2),
    Insn("exit"),
]


def run(body, subprograms=()):
    """The 64-bit r0 the body leaves, as the kernel computed it."""
    if uses_cpu_v4(list(body) + list(subprograms)):
        require("isa.v4")
    with load(PROLOGUE + list(body) + EPILOGUE + list(subprograms), "xdp", name="semantics") as p:
        result = p.test_run(bytes(64))
    assert result.retval == 2
    return struct.unpack_from("<Q", result.data_out)[0]


# -- ALU: a model from RFC 9669 ----------------------------------------------------------------------

def alu_model(op, bits, a, b):
    """dst op= src for `bits`-wide ALU; a and b are the full register values."""
    m = mask(bits)
    ua, ub = a & m, b & m
    sa, sb = sext(a, bits), sext(b, bits)
    shift = ub & (bits - 1)
    result = {
        "add": lambda: ua + ub,
        "sub": lambda: ua - ub,
        "mul": lambda: ua * ub,
        "div": lambda: 0 if ub == 0 else ua // ub,
        "mod": lambda: ua if ub == 0 else ua % ub,
        "sdiv": lambda: 0 if sb == 0 else trunc_div(sa, sb),
        "smod": lambda: sa if sb == 0 else sa - sb * trunc_div(sa, sb),
        "or": lambda: ua | ub,
        "and": lambda: ua & ub,
        "xor": lambda: ua ^ ub,
        "lsh": lambda: ua << shift,
        "rsh": lambda: ua >> shift,
        "arsh": lambda: sa >> shift,
        "mov": lambda: ub,
    }[op]()
    return result & m  # 32-bit results are zero-extended into the 64-bit register


ALU_NAMES = ("add", "sub", "mul", "div", "mod", "sdiv", "smod", "or", "and", "xor", "lsh", "rsh", "arsh", "mov")
PAIRS = [
    (7, 3), (-7, 3), (7, -3), (-7, -3), (5, 0), (-5, 0), (INT64_MIN, -1), (0x80000000, -1),
    (0xFFFFFFFF, 1), (0x123456789, 0x100000001), (-1, 31), (-1, 32), (-1, 63), (0xDEADBEEFCAFEBABE, 13),
]


def _alu_cases():
    for bits, suffix in ((64, ""), (32, "32")):
        for op in ALU_NAMES:
            for a, b in PAIRS:
                if op in ("lsh", "rsh", "arsh") and not 0 <= b < 64:
                    continue
                yield pytest.param(op + suffix, bits, a, b, id=f"{op}{suffix}-{a:#x}-{b:#x}")


@pytest.mark.parametrize("name, bits, a, b", list(_alu_cases()))
def test_alu_reg(name, bits, a, b):
    op = name.rstrip("32") if bits == 32 else name
    body = [lddw(0, a), lddw(1, b), Insn(reg(name), 0, 1)]
    assert run(body) == alu_model(op, bits, a, b)


def _alu_imm_cases():
    for bits, suffix in ((64, ""), (32, "32")):
        for op in ALU_NAMES:
            for a, b in PAIRS:
                if not INT32_MIN <= b <= MASK32 >> 1 or (op in ("lsh", "rsh", "arsh") and not 0 <= b < bits):
                    continue
                if b == 0 and op in ("div", "mod", "sdiv", "smod"):
                    continue  # the verifier rejects division by a zero immediate
                yield pytest.param(op + suffix, bits, a, b, id=f"{op}{suffix}-{a:#x}-imm{b}")


@pytest.mark.parametrize("name, bits, a, b", list(_alu_imm_cases()))
def test_alu_imm(name, bits, a, b):
    op = name.rstrip("32") if bits == 32 else name
    body = [lddw(0, a), Insn(name, 0, 0, 0, b)]
    # An ALU64 immediate is sign-extended to 64 bits before the operation.
    assert run(body) == alu_model(op, bits, a, b & MASK64)


# Hand-computed edge cases: (instruction, a, b or None for unary, expected 64-bit register)
EDGES = [
    ("div", 123, 0, 0),
    ("mod", 123, 0, 123),
    ("div32", 0xFFFFFFFF00000005, 0, 0),
    ("mod32", 0xFFFFFFFF00000005, 0, 5),  # dst kept, but only its low half survives
    ("sdiv", INT64_MIN, -1, 1 << 63),
    ("smod", INT64_MIN, -1, 0),
    ("sdiv32", 0x80000000, -1, 0x80000000),
    ("smod32", 0x80000000, -1, 0),
    ("sdiv", -7, 2, (-3) & MASK64),
    ("smod", -7, 3, MASK64),
    ("smod", 7, -3, 1),
    ("smod32", -7, 3, MASK32),
    ("sdiv", 5, 0, 0),
    ("smod", -5, 0, (-5) & MASK64),
    ("add32", 0xFFFFFFFF, 1, 0),
    ("add32", 0xAAAAAAAA00000001, 1, 2),
    ("mov32", 0, 0xDEADBEEFCAFEBABE, 0xCAFEBABE),
    ("mul32", 0x10000, 0x10000, 0),
    ("sub", 0, 1, MASK64),
    ("lsh", 1, 63, 1 << 63),
    ("lsh32", 1, 31, 1 << 31),
    ("lsh", 0xFFFFFFFF, 32, 0xFFFFFFFF00000000),
    ("rsh", 1 << 63, 63, 1),
    ("rsh32", 0xFFFFFFFF80000000, 31, 1),
    ("arsh", -8, 1, (-4) & MASK64),
    ("arsh", INT64_MIN, 63, MASK64),
    ("arsh32", 0x80000000, 31, MASK32),
    ("neg", 1, None, MASK64),
    ("neg32", 1, None, MASK32),
    ("neg", INT64_MIN, None, 1 << 63),
    ("neg32", 1 << 32, None, 0),
    ("bswap16", 0x1122334455667788, None, 0x8877),
    ("bswap32", 0x1122334455667788, None, 0x88776655),
    ("bswap64", 0x1122334455667788, None, 0x8877665544332211),
    ("le16", 0x1122334455667788, None, 0x7788),
    ("le32", 0x1122334455667788, None, 0x55667788),
    ("le64", 0x1122334455667788, None, 0x1122334455667788),
    ("be16", 0x1122334455667788, None, 0x8877),
    ("be32", 0x1122334455667788, None, 0x88776655),
    ("be64", 0x1122334455667788, None, 0x8877665544332211),
]


@pytest.mark.parametrize("name, a, b, expected", EDGES, ids=[f"{e[0]}-{e[1]:#x}" for e in EDGES])
def test_alu_edges(name, a, b, expected):
    if b is None:
        body = [lddw(0, a), Insn(name, 0)]
    else:
        body = [lddw(0, a), lddw(1, b), Insn(reg(name), 0, 1)]
    assert run(body) == expected


def test_model_agrees_with_edges():
    """The model and the literals are written independently; they must agree where both apply."""
    for name, a, b, expected in EDGES:
        if b is None or name.startswith("mov"):
            continue
        bits = 32 if name.endswith("32") else 64
        assert alu_model(name[:-2] if bits == 32 else name, bits, a, b) == expected, name


MOVSX = [
    ("movsx864", 0x80, 0xFFFFFFFFFFFFFF80),
    ("movsx864", 0x17F, 0x7F),
    ("movsx1664", 0x8000, 0xFFFFFFFFFFFF8000),
    ("movsx3264", 0x80000000, 0xFFFFFFFF80000000),
    ("movsx3264", 0xFFFFFFFF7FFFFFFF, 0x7FFFFFFF),
    ("movsx832", 0xFFFFFFFFFFFFFF80, 0xFFFFFF80),  # sign-extends to 32 bits, then zero-extends
    ("movsx1632", 0x7FFF, 0x7FFF),
    ("movsx1632", 0x18000, 0xFFFF8000),
]


@pytest.mark.parametrize("name, value, expected", MOVSX, ids=[f"{m[0]}-{m[1]:#x}" for m in MOVSX])
def test_movsx(name, value, expected):
    width, bits = (int(name[5:-2]), int(name[-2:]))
    assert expected == sext(value, width) & mask(bits)  # the model says the same
    assert run([lddw(1, value), Insn(name, 0, 1)]) == expected


@pytest.mark.parametrize("name, value", [
    ("ldxsb", 0x80), ("ldxsb", 0x7F), ("ldxsh", 0x8000), ("ldxsh", 0x1234), ("ldxsw", 0x80000000),
    ("ldxsw", 0xFFFFFFFF), ("ldxb", 0x80), ("ldxh", 0x8000), ("ldxw", 0x80000000), ("ldxdw", 1 << 63),
])
def test_loads(name, value):
    width = {"b": 8, "h": 16, "w": 32, "dw": 64}[name[4:] if name.startswith("ldxs") else name[3:]]
    expected = sext(value, width) & MASK64 if name.startswith("ldxs") else value & mask(width)
    body = [lddw(1, value), Insn("stxdw", 10, 1, -8), Insn(name, 0, 10, -8)]
    assert run(body) == expected


# -- the DSL's cpu v3 lowering of v4 instructions: same results, on any kernel -------------------------

def v3_body(build):
    """The straight-line body `build(p)` writes into a Program(cpu="v3"): no cpu v4 instruction."""
    from pybpf.asm import Program

    p = Program(cpu="v3")
    build(p)
    assert not uses_cpu_v4(p.insns)
    return p.insns


@pytest.mark.parametrize("name, value, expected", MOVSX, ids=[f"{m[0]}-{m[1]:#x}" for m in MOVSX])
def test_movsx_lowered_for_cpu_v3(name, value, expected):
    width, bits = (int(name[5:-2]), int(name[-2:]))

    def build(p):
        p.r1 = value
        p.movsx(p.r0 if bits == 64 else p.w0, p.r1, width)
    assert run(v3_body(build)) == expected


@pytest.mark.parametrize("type, value", [("s8", 0x80), ("s8", 0x7F), ("s16", 0x8000), ("s16", 0x1234),
                                         ("s32", 0x80000000), ("s32", 0xFFFFFFFF), ("s32", 0x7FFFFFFF)])
def test_signed_loads_lowered_for_cpu_v3(type, value):
    width = int(type[1:])

    def build(p):
        p.r1 = value
        p.r10.u64[-8] = p.r1
        p.r0 = p.r10.mem(-8, type)
    assert run(v3_body(build)) == sext(value, width) & MASK64


@pytest.mark.parametrize("bits, expected", [(16, 0x8877), (32, 0x88776655), (64, 0x8877665544332211)])
def test_bswap_lowered_for_cpu_v3(bits, expected):
    def build(p):
        p.r0 = 0x1122334455667788
        p.bswap(p.r0, bits)
    assert run(v3_body(build)) == expected


@pytest.mark.parametrize("value", [0, 1, MASK64, 1 << 63, 0x123456789ABCDEF0, 0xFFFFFFFF, 0x100000000])
def test_ld_imm64(value):
    assert run([lddw(0, value)]) == value


# -- jumps --------------------------------------------------------------------------------------------

def jump_model(cond, bits, a, b):
    ua, ub = a & mask(bits), b & mask(bits)
    sa, sb = sext(a, bits), sext(b, bits)
    return {
        "jeq": ua == ub, "jne": ua != ub, "jset": bool(ua & ub),
        "jgt": ua > ub, "jge": ua >= ub, "jlt": ua < ub, "jle": ua <= ub,
        "jsgt": sa > sb, "jsge": sa >= sb, "jslt": sa < sb, "jsle": sa <= sb,
    }[cond]


JUMP_PAIRS = [(1, 2), (2, 1), (5, 5), (-1, 1), (1, -1), (0x100000001, 1), (0x80000000, 0x7FFFFFFF),
              (INT64_MIN, INT64_MAX), (0, 0), (-2, -1), (0xFFFFFFFF, -1)]


def _jump_cases():
    for cond in isa.JMP_CONDS:
        for bits, suffix in ((64, ""), (32, "32")):
            for a, b in JUMP_PAIRS:
                yield pytest.param(cond.name + suffix, cond.name, bits, a, b, "reg",
                                   id=f"{cond.name}{suffix}-{a:#x}-{b:#x}")
                if INT32_MIN <= b <= MASK32 >> 1:
                    yield pytest.param(cond.name + suffix, cond.name, bits, a, b, "imm",
                                       id=f"{cond.name}{suffix}-{a:#x}-imm{b}")


@pytest.mark.parametrize("name, cond, bits, a, b, source", list(_jump_cases()))
def test_jump(name, cond, bits, a, b, source):
    if source == "reg":
        branch = Insn(isa.lookup(name, "reg"), 1, 2, 1)
    else:
        branch = Insn(isa.lookup(name, "imm"), 1, 0, 1, b)  # the immediate is sign-extended for 64-bit jumps
    body = [lddw(1, a), lddw(2, b), Insn("mov", 0, 0, 0, 1), branch, Insn("mov", 0, 0, 0, 0)]
    assert run(body) == int(jump_model(cond, bits, a, b))


def test_ja_and_gotol():
    # 0 -> a (r0 += 10) -> gotol back to b -> ja to end (r0 += 1): every instruction reachable.
    body = [
        Insn("mov", 0, 0, 0, 1),
        Insn("ja", ref="a"),
        Insn("ja", ref="end", label="b"),
        Insn("add", 0, 0, 0, 10, label="a"),
        Insn("gotol", ref="b"),
        Insn("add", 0, 0, 0, 1, label="end"),
    ]
    assert run(body) == 12


# -- atomics ------------------------------------------------------------------------------------------

ATOMIC_MODEL = {
    "add": lambda old, v: old + v, "or": lambda old, v: old | v,
    "and": lambda old, v: old & v, "xor": lambda old, v: old ^ v,
    "xchg": lambda old, v: v,
}
INIT, OPERAND = 0x1111111180000001, 0x0F0F0F0F7FFFFFFF


def _atomic_cases():
    for bits, suffix in ((64, ""), (32, "32")):
        for op in ("add", "or", "and", "xor"):
            yield pytest.param(f"lock_{op}{suffix}", op, bits, "memory", id=f"{op}{suffix}")
            for read in ("memory", "fetched"):  # only fetching forms load the old value
                yield pytest.param(f"lock_fetch_{op}{suffix}", op, bits, read, id=f"fetch_{op}{suffix}-{read}")
        for read in ("memory", "fetched"):
            yield pytest.param(f"lock_xchg{suffix}", "xchg", bits, read, id=f"xchg{suffix}-{read}")


@pytest.mark.parametrize("name, op, bits, read", list(_atomic_cases()))
def test_atomic_on_stack(name, op, bits, read):
    m = mask(bits)
    new = (INIT & ~m) | (ATOMIC_MODEL[op](INIT & m, OPERAND & m) & m)  # a 32-bit op leaves the high half
    body = [lddw(1, INIT), Insn("stxdw", 10, 1, -8), lddw(2, OPERAND), Insn(name, 10, 2, -8)]
    body.append(Insn("ldxdw", 0, 10, -8) if read == "memory" else Insn(reg("mov"), 0, 2))
    assert run(body) == (new if read == "memory" else INIT & m)


@pytest.mark.parametrize("bits", [64, 32])
@pytest.mark.parametrize("matches", [True, False])
@pytest.mark.parametrize("read", ["memory", "r0"])
def test_cmpxchg_on_stack(bits, matches, read):
    m = mask(bits)
    expected_old = INIT if matches else INIT + 1
    new_memory = ((INIT & ~m) | (OPERAND & m)) if matches else INIT
    name = "lock_cmpxchg" + ("32" if bits == 32 else "")
    body = [lddw(1, INIT), Insn("stxdw", 10, 1, -8), lddw(2, OPERAND), lddw(0, expected_old),
            Insn(name, 10, 2, -8)]  # r0 = old value, swapped in only when it equals r0
    if read == "memory":
        body.append(Insn("ldxdw", 0, 10, -8))
    assert run(body) == (new_memory if read == "memory" else INIT & m)


@pytest.mark.parametrize("name, expected_memory, expected_r0", [
    ("lock_add", INIT + OPERAND, None),
    ("lock_fetch_xor", INIT ^ OPERAND, INIT),
    ("lock_xchg", OPERAND, INIT),
    ("cmpxchg-hit", OPERAND, INIT),
    ("cmpxchg-miss", INIT, INIT),
])
def test_atomics_on_a_map_value(name, expected_memory, expected_r0):
    with Map(MapType.ARRAY, key=4, value=8, max_entries=1) as m:
        m.update(0, INIT)
        body = [Insn("ld_map_value", 7, imm=0, ref=m), lddw(2, OPERAND)]
        if name.startswith("cmpxchg"):
            body += [lddw(0, INIT if name.endswith("hit") else 0), Insn("lock_cmpxchg", 7, 2, 0),
                     Insn(reg("mov"), 2, 0)]
        else:
            body.append(Insn(name, 7, 2, 0))
        body.append(Insn("ldxdw", 0, 7, 0) if expected_r0 is None else Insn(reg("mov"), 0, 2))
        result = run(body)
        assert result == (expected_memory if expected_r0 is None else expected_r0) & MASK64
        assert m.lookup(0) == expected_memory & MASK64  # what the program left, read back by user space


# -- bpf-to-bpf calls -----------------------------------------------------------------------------------

def test_call_passes_args_and_returns():
    body = [Insn("mov", 1, 0, 0, 6), Insn("mov", 2, 0, 0, 7), Insn("call_local", ref="mul")]
    sub = [Insn(reg("mov"), 0, 1, label="mul"), Insn(reg("mul"), 0, 2), Insn("exit")]
    assert run(body, sub) == 42


def test_call_preserves_callee_saved_registers():
    # The callee clobbers r6 (our ctx) and r7; the caller's values must survive.
    body = [Insn("mov", 7, 0, 0, 100), Insn("call_local", ref="clobber"), Insn(reg("add"), 0, 7)]
    sub = [Insn("mov", 6, 0, 0, 0, label="clobber"), Insn("mov", 7, 0, 0, 1), Insn("mov", 0, 0, 0, 5),
           Insn("exit")]
    assert run(body, sub) == 105


def test_nested_calls_and_private_stacks():
    body = [Insn("mov", 1, 0, 0, 1), Insn("stdw", 10, 0, -8, 1000), Insn("call_local", ref="f1"),
            Insn("ldxdw", 1, 10, -8), Insn(reg("add"), 0, 1)]
    sub = [
        # f1(x) = f2(x + 10) with its own stack slot at r10-8
        Insn("stdw", 10, 0, -8, 7, label="f1"), Insn("add", 1, 0, 0, 10), Insn("call_local", ref="f2"),
        Insn("ldxdw", 1, 10, -8), Insn(reg("add"), 0, 1), Insn("exit"),
        # f2(x) = x * 3
        Insn(reg("mov"), 0, 1, label="f2"), Insn("mul", 0, 0, 0, 3), Insn("exit"),
    ]
    # f2(11) = 33, f1 adds its slot (7) = 40, main adds its untouched slot (1000)
    assert run(body, sub) == 1040


def test_call_with_pointer_to_callers_stack():
    body = [Insn("stdw", 10, 0, -8, 41), Insn(reg("mov"), 1, 10), Insn("add", 1, 0, 0, -8),
            Insn("call_local", ref="inc"), Insn("ldxdw", 0, 10, -8)]
    sub = [Insn("ldxdw", 2, 1, 0, label="inc"), Insn("add", 2, 0, 0, 1), Insn("stxdw", 1, 2, 0),
           Insn("mov", 0, 0, 0, 0), Insn("exit")]
    assert run(body, sub) == 42
