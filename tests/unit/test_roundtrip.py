"""assemble(disassemble(x, syntax)) == x, byte for byte, over the whole opcode table.

Every isa.OPS row gets random valid fields; sequences mix rows and jumps. A
form the disassembler prints that the assembler cannot read back (or reads
back differently) fails here with the row and the text.
"""
import pytest
from hypothesis import given, settings, strategies as st

from pybpf import isa
from pybpf.insn import Insn, encode

disasm = pytest.importorskip("pybpf.disasm")
from pybpf.text import assemble  # noqa: E402

SYNTAXES = ("kernel", "llvm", "ubpf")

S16 = st.integers(-(1 << 15), (1 << 15) - 1)
S32 = st.integers(-(1 << 31), (1 << 31) - 1)
U64 = st.integers(0, (1 << 64) - 1)
REG = st.integers(0, isa.MAX_REG)
U32 = st.integers(0, (1 << 32) - 1)
# ld_imm64 rows: what the 64-bit immediate can hold. A map fd, map index or BTF id
# is 32 bits with a zero high half (the kernel rejects anything else), and so is
# a subprogram's signed pc-relative offset; map values carry an offset on top.
IMM64 = {"lddw": U64, "ld_map_value": U64, "ld_map_idx_value": U64,
         "ld_map_fd": U32, "ld_map_idx": U32, "ld_btf_id": U32, "ld_func": U32}


@st.composite
def insns(draw, row=None):
    op = row if row is not None else draw(st.sampled_from(isa.OPS))
    fields = {}
    for field in ("dst", "src"):
        fields[field] = draw(REG) if field in op.uses else 0
    fields["off"] = draw(S16) if "off" in op.uses else 0
    if "imm" in op.uses:
        fields["imm"] = draw(IMM64.get(op.name, S32))
    insn = Insn(op, **fields)
    insn.validate()
    return insn


def roundtrip(code, syntax):
    text = disasm.disassemble(code, syntax)
    try:
        back = assemble(text, "ubpf" if syntax == "ubpf" else "llvm")
    except Exception as err:  # show the text that did not read back
        raise AssertionError(f"{syntax}: {err}\n{text}") from err
    assert back.hex() == code.hex(), f"{syntax}:\n{text}"


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("row", isa.OPS, ids=lambda op: f"{op.name}/{op.source}")
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_every_row(syntax, row, data):
    roundtrip(encode([data.draw(insns(row))]), syntax)


@pytest.mark.parametrize("syntax", SYNTAXES)
@settings(max_examples=150, deadline=None)
@given(program=st.lists(insns(), min_size=1, max_size=40))
def test_random_programs(syntax, program):
    roundtrip(encode(program), syntax)


@st.composite
def programs_with_jumps(draw):
    """Straight-line code with jumps whose targets land on instruction starts."""
    body = draw(st.lists(insns(), min_size=2, max_size=30))
    starts, pc = [], 0
    for insn in body:
        starts.append(pc)
        pc += insn.slots
    starts.append(pc)
    out, pc = [], 0
    for insn in body:
        if insn.op.jumps or insn.op.name in ("call_local", "ld_func"):
            target = draw(st.sampled_from(starts))
            field = "imm" if insn.op.kind == "gotol" or insn.op.name in ("call_local", "ld_func") else "off"
            delta = target - (pc + 1)
            setattr(insn, field, delta & 0xFFFFFFFF if insn.op.name == "ld_func" else delta)
        out.append(insn)
        pc += insn.slots
    return out


@pytest.mark.parametrize("syntax", SYNTAXES)
@settings(max_examples=150, deadline=None)
@given(program=programs_with_jumps())
def test_programs_with_jumps(syntax, program):
    roundtrip(encode(program), syntax)
