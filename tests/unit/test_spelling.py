"""pybpf.asm.spelling: one table per syntax, printed and read back from the same lines."""
import pytest

from pybpf.asm import disasm, isa, spelling, text
from pybpf.asm.isa import Kind
from pybpf.errors import AssemblerError


def _read(forms, line):
    """The Insn the first form matching `line` reads, as the assembler reads a statement."""
    for form in forms:
        m = form.regex.match(line)
        if m is not None:
            c = text._Line()
            c.lineno, c.m, c.source = 1, m, "line 1"
            return form.build(c)
    raise AssertionError(f"no form reads {line!r}")


def test_every_row_prints_in_every_syntax():
    for syntax in spelling.SYNTAXES:
        for row in isa.OPS:
            assert spelling.PRINTERS[syntax][row](1, 2, 3, 4, disasm.RAW)


def test_a_new_row_of_a_spelled_kind_is_printed_and_read_without_a_new_line(monkeypatch):
    """Adding an instruction is adding a row: an ALU operation the tables have never seen
    prints and reads back in every syntax, through the lines that spell its kind."""
    frob = isa.Op("frob", isa.ALU64 | isa.K | 0xE0, Kind.ALU, "frob", 64, "imm", frozenset(("dst", "imm")),
                  (), "@=")
    monkeypatch.setattr(isa, "OPS", isa.OPS + (frob,))
    for syntax, written in (("kernel", "r3 @= 7"), ("llvm", "r3 @= 0x7"), ("ubpf", "frob %r3, 0x7")):
        assert spelling.Printers(syntax)[frob](3, 0, 0, 7, disasm.RAW) == written
        forms = spelling.forms(*(("kernel", "llvm") if syntax != "ubpf" else ("ubpf",)))
        insn = _read(forms, written)
        assert (insn.op, insn.dst, insn.imm) == (frob, 3, 7)


def test_every_row_has_an_unconditional_line(monkeypatch):
    """A row no line prints is found at import (here: a table without its exit line)."""
    monkeypatch.setitem(spelling.TABLES, "kernel", tuple(line for line in spelling.KERNEL if line[1] != "exit"))
    with pytest.raises(AssertionError, match="kernel has no unconditional line for exit"):
        spelling.Printers("kernel")[isa.lookup("exit")]


@pytest.mark.parametrize("line,message", [
    ("w1 = (s32)w2", "no movsx with s32 on 32-bit registers"),
    ("lock *(u8 *)(r1 +0) += r2", "expected u32 or u64"),
])
def test_reading_says_what_is_wrong(line, message):
    with pytest.raises(AssemblerError, match=message):
        text.assemble(line, "llvm")
