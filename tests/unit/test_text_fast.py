"""assemble()'s quick reading (each line's forms joined into one regex, read straight to bytes)
against the plain pipeline (parse, link, encode: each form tried in turn, an Insn per line),
over every form of every syntax the assembler reads, every row each form reads, and fields
spelled right and wrong. The quick reading must give the same bytes, or leave the text to the
plain pipeline (which then says what is wrong, as it always did)."""
import itertools
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pybpf.asm import disasm, isa, spelling, text
from pybpf.asm.insn import encode, make
from pybpf.asm.link import link
from pybpf.errors import AssemblerError

_COLUMNS = re.compile(r"^\s*\d+:\s*(?:\([0-9a-f]{2}\)\s*)?", re.M)  # a listing's "12:" and "(b7)"
_END = "\nlbl:\nsome_label:\nexit\n"  # the labels sample lines jump to, and an instruction after them


def _plain(source, syntax):
    try:
        return encode(link(text.parse(source, syntax)))
    except AssemblerError as err:
        return err


def _check(source, syntax):
    """The quick reading agrees with the plain pipeline; True when it read the text itself."""
    try:
        quick = text._assemble(source, syntax)
    except AssemblerError:
        quick = None
    plain = _plain(source, syntax)
    if quick is not None:
        assert not isinstance(plain, AssemblerError), f"{source!r}: quick {quick.hex()}, plain says {plain}"
        assert quick == plain, f"{source!r}: quick {quick.hex()} != plain {plain.hex()}"
    # and assemble() says what the plain pipeline says, bytes or error
    try:
        assert text.assemble(source, syntax) == plain
    except AssemblerError as err:
        assert str(err) == str(plain)
    return quick is not None


_REG_NUMBERS = (0, 1, 10, 11)


def _field_texts(ftype, row, name):
    """A few spellings of a field for this row: right ones, and some wrong."""
    if isinstance(ftype, spelling.Register):
        if ftype.prefix == "%r":
            return ["%r1", "r2", "%r10", "%r11"]
        letter = ftype.letter(row)
        other = "w" if letter == "r" else "r"
        return [f"{letter}{n}" for n in _REG_NUMBERS] + [f"{other}3"]
    if isinstance(ftype, spelling.Word):
        if ftype.numeric:
            return [f"{ftype.key(row):#x}", "0x9"]
        return list(ftype.words(row)) + ["add", "u32", "s8", "=="]
    if isinstance(ftype, spelling.Callee):
        if ftype.kernel:
            return ["bpf_map_lookup_elem", "map_lookup_elem#1", "1", "-1", "pc+3", "pc-2", "some_label",
                    "kfunc#77", "unknown#5", "0x7fffffff"]
        return ["bpf_trace_printk", "some_label", "map_lookup_elem", "lbl"]
    if ftype.target:
        return ["+5", "-3", "pc+2", "pc-0x1", "+0x7fff", "-32768", "+32768", "lbl", "+ 4", "pc"]
    if ftype.read is not spelling.number:  # mapid
        return ["fd:3", "id:7", "fd : 0x10"]
    if not ftype.word:  # an offset
        return ["+ 8", "- 0x10", "+8", "-8", "+ 32767", "- 32768", "+ 32768", "+ -3", "+0x7fff", "+ 010"]
    return ["0", "5", "-1", "0x7fffffff", "-0x80000000", "0xffffffff", "0x100000000", "-2147483649", "010",
            "0xffffffffffffffff", "- 7", "+3"]


def _lines(form, row, rnd, most=24):
    """Lines of the form's template for this row, fields filled from _field_texts."""
    items = spelling.parts(form.template)
    choices = [[lit] if lit is not None else
               (_field_texts(ftype, row, name) + ([""] if optional else []))
               for lit, name, ftype, optional in items]
    combos = list(itertools.product(*choices))
    first = combos[0]  # each field's first spelling: a right one
    rnd.shuffle(combos)
    return ["".join(combo).replace("\t", " ") for combo in [first] + combos[:most]]


_FAMILIES = {"llvm": ("kernel", "llvm"), "ubpf": ("ubpf",)}


@pytest.mark.parametrize("syntax", sorted(_FAMILIES))
def test_every_form_and_row_reads_the_same_as_the_plain_pipeline(syntax):
    rnd = random.Random(27)
    forms = spelling.forms(*_FAMILIES[syntax])
    read_quickly = set()
    for form in forms:
        for row in form.rows:
            for line in _lines(form, row, rnd):
                for variant in (line, "\t" + line, line.replace(" ", "  "), line + " ", line.replace(" ", "\t")):
                    if _check(variant + _END, syntax):
                        read_quickly.add(form.template)
    # the quick reading is no dead branch: it reads every form but those that only name labels
    unread = {form.template for form in forms} - read_quickly
    assert all("ucallee" in template for template in unread), unread


def _printed(syntax, rows, rnd, count):
    """Instructions of these rows with random fields, printed in `syntax` without listing columns."""
    insns = []
    for _ in range(count):
        row = rnd.choice(rows)
        fields = {"dst": rnd.randrange(11), "src": rnd.randrange(11), "off": rnd.randrange(-32768, 32768),
                  "imm": rnd.randrange(-(1 << 31), 1 << 31)}
        if row.kind == "ld_imm64":
            fields["imm"] = rnd.randrange(-(1 << 63), 1 << 64) if row.operation == "lddw" else rnd.randrange(1 << 32)
        insns.append(make(row, *(fields[f] if f in row.uses else 0 for f in isa.FIELDS)))
    code = encode(insns)
    listing = disasm.disassemble(code, syntax)
    return code, _COLUMNS.sub("", listing)


# What the quick reading leaves to the slow path in printed text: the kernel's lddw, which reads
# first as a mov too wide for it (the plain pipeline's _read makes it an lddw), and a negative
# ld_ind immediate after LLVM's "+ " (number() reads "+ -0x10").
_SLOW_LINES = re.compile(r"^r\d+ = -?0x[0-9a-f]+$|skb\[r\d+ \+ -")


@pytest.mark.parametrize("syntax", ["llvm", "kernel", "ubpf"])
def test_printed_programs_are_read_quickly_and_to_the_same_bytes(syntax, monkeypatch):
    """What the disassembler prints (numeric targets, no labels) is read quickly, but for
    _SLOW_LINES."""
    rows = [row for row in isa.OPS if row.kind != "ld_imm64" or row.operation == "lddw"]
    code, source = _printed(syntax, rows, random.Random(9669), 3000)
    parse_line = text._parse_line

    def slow_path(*args):
        assert _SLOW_LINES.search(args[2]), f"line {args[1]} {args[2]!r} took the slow path"
        return parse_line(*args)
    monkeypatch.setattr(text, "_parse_line", slow_path)
    assert text._assemble(source, syntax) == code


def test_a_wide_mov_and_a_label_take_the_slow_path_to_the_same_bytes():
    for source in ("r1 = 0x100000000\nexit", "r1 = -0x80000001\nexit", "goto out\nr0 = 0\nout:\nexit",
                   "if r1 > 5 goto +1\ncall pc+1\nexit\nexit"):
        assert text.assemble(source, "llvm") == encode(link(text.parse(source, "llvm")))


def test_repeated_lines_cached_or_not_read_the_same():
    """Past the cache's first judgement (text that does not repeat goes without) lines still read."""
    source = "\n".join(f"r{n % 10} += {n}" for n in range(text._CACHE_CHECK * 2)) + "\nexit\nexit\n"
    assert text.assemble(source, "llvm") == encode(link(text.parse(source, "llvm")))
    source = "r1 = r6\nexit\n" * text._CACHE_CHECK
    assert text.assemble(source, "llvm") == encode(link(text.parse(source, "llvm")))


_EDITS = " \t,+-x0123456789rw%[]()*=:#;lu"


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2 ** 32), st.sampled_from(["llvm", "kernel", "ubpf"]), st.lists(
    st.tuples(st.integers(0, 200), st.sampled_from(["delete", "insert"]), st.sampled_from(list(_EDITS))),
    max_size=3))
def test_mangled_lines_read_the_same_or_fail_the_same(seed, syntax, edits):
    rows = [row for row in isa.OPS if row.kind != "ld_imm64" or row.operation == "lddw"]
    _, source = _printed(syntax, rows, random.Random(seed), 1)
    for at, how, char in edits:
        at %= len(source) + 1
        source = source[:at] + char + source[at + (how == "delete"):] if how == "delete" and at < len(source) \
            else source[:at] + char + source[at:]
    _check(source + _END, "llvm" if syntax == "kernel" else syntax)
