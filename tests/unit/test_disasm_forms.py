"""The disassembler's fast path (one function per opcode over iter_unpack, the slot cache, the
pc column in one %-format) against the per-instruction path (insn.decode, Insn.validate and
the row's printer, as format_insn prints one instruction), on every instruction form: each
row with its fields at their bounds, each opcode byte with any registers, offsets and
immediates (so invalid ones too), ld_imm64 with good and bad second slots, a truncated tail.
"""
import array
import random
import struct

import pytest

from pybpf import isa
from pybpf.asm import disasm
from pybpf.insn import Insn, encode

SLOT = struct.Struct("<BBhi")
EDGES = {"dst": (0, 1, 10), "src": (0, 3, 10), "off": (-(1 << 15), -1, 0, 1, (1 << 15) - 1),
         "imm": (-(1 << 31), -1, 0, 1, (1 << 31) - 1)}
WIDE_EDGES = (0, 1, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) + 5, (1 << 64) - 1)


def every_row_at_its_bounds():
    out = []
    for row in isa.OPS:
        fields = [name for name in isa.FIELDS if name in row.uses]
        combos = [{}]
        for name in fields:
            values = WIDE_EDGES if name == "imm" and row.wide else EDGES[name]
            combos = [dict(c, **{name: v}) for c in combos for v in values]
        out += [Insn(row, **combo) for combo in combos]
    return encode(out)


def every_opcode_with_any_fields(seed=7, per_opcode=60):
    """Raw slots: each opcode byte with random fields, the discriminating values of the table
    (sdiv's off, an atomic's imm, a call's src, ...) and reserved fields set now and then."""
    rnd = random.Random(seed)
    offs = sorted({0, 1, -1, 8, 16, 32, 64, 0x7FFF, -0x8000} | {v for (_, v) in isa.DECODE if isinstance(v, int)})
    out = []
    for code in range(256):
        for _ in range(per_opcode):
            regs = rnd.choice((rnd.randrange(256), rnd.randrange(11), rnd.randrange(11) << 4 | rnd.randrange(11)))
            off = rnd.choice((rnd.choice(offs), rnd.randrange(-(1 << 15), 1 << 15)))
            imm = rnd.choice((rnd.choice(offs), rnd.randrange(-(1 << 31), 1 << 31)))
            out.append(SLOT.pack(code, regs, off, imm))
            if code == 0x18:  # a second slot: right (zeros and imm's high half), or not
                out.append(SLOT.pack(0, 0, 0, imm) if rnd.random() < 0.6 else
                           SLOT.pack(rnd.choice((0, 0x18, 0xb7)), rnd.randrange(3), rnd.randrange(2), imm))
    return b"".join(out)


def per_instruction(code, syntax, symbols, pcs):
    """The text as format_insn prints each instruction that insn.decode reads."""
    lines, pos = [], 0
    while pos < len(code):
        insn = disasm._decode_one(code[pos:pos + 16], symbols)
        lines.append(disasm.format_insn(insn, syntax, pos // 8 if pcs else None, symbols=symbols))
        pos += len(insn.raw) if insn.op is None else 8 * insn.op.slots
    return "".join(line + "\n" for line in lines)


CORPORA = {
    "rows": every_row_at_its_bounds(),
    "opcodes": every_opcode_with_any_fields(),
    "tail": encode([Insn("exit"), Insn("lddw", 1, imm=5)]) + bytes.fromhex("18010000000000000000") + b"\x95\x00",
}
XLATED = disasm.Symbols(xlated=True)  # r11 reads, calls and maps print as from the kernel


@pytest.mark.parametrize("caching", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("symbols", [disasm.RAW, XLATED], ids=["raw", "xlated"])
@pytest.mark.parametrize("syntax", disasm.SYNTAXES)
@pytest.mark.parametrize("corpus", CORPORA)
def test_fast_path_prints_what_each_instruction_does(corpus, syntax, symbols, caching, monkeypatch):
    code = CORPORA[corpus]
    monkeypatch.setattr(disasm, "_REPEATS", 1.0 if caching else -1.0)
    for pcs in (True, False):
        assert disasm.disassemble(code, syntax, symbols=symbols, pcs=pcs) == \
            per_instruction(code, syntax, symbols, pcs)


def test_pc_column_widths():
    """bpftool's "%4d: " and llvm-objdump's "%8d:\\t" across the digit counts, wide slots between."""
    insns = [Insn("lddw", 1, imm=7) if i % 97 == 0 else Insn("mov", 1, imm=i) for i in range(12000)]
    code = encode(insns)
    for syntax in ("kernel", "llvm"):
        assert disasm.disassemble(code, syntax) == per_instruction(code, syntax, disasm.RAW, True)


def test_any_buffer_reads_as_its_bytes():
    """bytes, bytearray, and a memoryview of 8-byte items: the same text."""
    code = CORPORA["tail"]
    whole = code[:len(code) & ~7]
    expected = disasm.disassemble(whole)
    assert disasm.disassemble(bytearray(whole)) == expected
    assert disasm.disassemble(memoryview(array.array("Q", whole))) == expected
