"""Text assembler: LLVM/kernel syntax and ubpf syntax -> Insn values -> bytes.

    r1 = *(u32 *)(r2 + 4)          LLVM (llvm-mc) and kernel (verifier log, bpftool) syntax
    ldxw %r1, [%r2+4]              ubpf / bpf_conformance syntax

`parse(text)` gives unlinked Insn values (labels and label references kept, `source` =
"line L, column C"); `assemble(text)` links and encodes them. The statements are the
spelling tables' (pybpf.asm.spelling), kernel and LLVM read together; this module reads
lines: labels, comments, and pasted verifier logs, `bpftool prog dump xlated` and
`llvm-objdump -d` listings (their "12:", "(b7)" and raw-byte prefixes are skipped, and the
lines without one: register states, headers). An error names the line and column where the
text stops making sense, and what was expected there.
"""
import gc
import re

from ..errors import AssemblerError
from . import isa, spelling
from .insn import encode, make
from .link import link, resolve

SYNTAXES = ("auto", "llvm", "kernel", "ubpf")  # kernel (verifier log, bpftool) and LLVM share one reader


class _Line:
    """The line a form matched (m), for the form's reader to say where it is at fault."""

    __slots__ = ("lineno", "m", "source")

    def fail(self, group, message):
        col = self.m.start(group) + 1 if group else self.col
        raise AssemblerError(message, f"line {self.lineno}, column {col}")

    @property
    def col(self):
        return self.m.start() + 1 + (len(self.m.group()) - len(self.m.group().lstrip()))


# --- the forms of each syntax, by how a line starts ---------------------------------------

_FORMS = {"llvm": spelling.forms("kernel", "llvm"), "ubpf": spelling.forms("ubpf")}
_REG_HEADS = [f"{prefix}{n}" for prefix in "rw" for n in range(10)]  # "r10" starts as "r1"


def _heads(form, prefix):
    """What a line this form reads starts with: its first word, or with prefix=2 its first two
    characters; "reg" for a register."""
    literal, _, ftype, _ = spelling.parts(form.template)[0]
    if literal is not None:
        head = re.match(r"\*|[A-Za-z_]\w*", literal).group()
        return [literal[:2]] if prefix else [head]
    if isinstance(ftype, spelling.Register):
        return _REG_HEADS if prefix else ["reg"]
    return sorted({w[:2] if prefix else w for row in form.rows for w in ftype.words(row)})


def _index(forms, prefix):
    index = {}
    for form in forms:
        for head in _heads(form, prefix):
            index.setdefault(head, []).append(form)
    return index


# Fast dispatch of bare statements: LLVM by their first two characters, ubpf by mnemonic. The
# slow path (listings, labels, errors) finds forms by the first word.
_BY_WORD = {name: _index(forms, 0) for name, forms in _FORMS.items()}
_BY_PREFIX = _index(_FORMS["llvm"], 2)
_FAST_KEYS = {
    "llvm": lambda stripped: _BY_PREFIX.get(stripped[:2]),
    "ubpf": lambda stripped: _BY_WORD["ubpf"].get(stripped.partition(" ")[0]),
}
_KEY = {"llvm": re.compile(r"\s*(\*|[A-Za-z_]\w*)"), "ubpf": re.compile(r"\s*([A-Za-z_]\w*)")}


def _forms_for(name):
    index, key = _BY_WORD[name], _KEY[name]

    def forms_for(line, pos, end):
        m = key.match(line, pos, end)
        if m is None:
            return None, pos
        word = m.group(1)
        forms = index.get(word)
        if forms is None and name == "llvm" and word[:1] in "rw" and word[1:].isdigit():
            forms = index.get("reg")
        return forms, m.start(1)
    return forms_for


_LDDW = isa.row(isa.Kind.LD_IMM64, "lddw")
_MOV64_IMM = isa.row(isa.Kind.ALU, "mov", 64, "imm")


def _read(form, ctx):
    """The Insn of a matched line. LLVM spells a 64-bit constant too wide for mov as a mov."""
    insn = form.build(ctx)
    if insn.op is _MOV64_IMM and not -(1 << 31) <= insn.imm < (1 << 31):
        return make(_LDDW, insn.dst, 0, 0, insn.imm, None, None, insn.source)
    return insn


# --- lines ----------------------------------------------------------------------

# Listing prefixes: "12:" then "(b7)" (verifier log, bpftool) or raw bytes (llvm-objdump).
_PREFIX = re.compile(r"\s*\d+:\s*(?:\((?P<code>[0-9a-fA-F]{2})\)\s*|(?:[0-9a-fA-F]{2}\s){8}(?:(?:[0-9a-fA-F]{2}\s){8})?)?")
_LISTING = re.compile(r"^\s*\d+:\s*\([0-9a-fA-F]{2}\)\s", re.M)
_COMMENT = re.compile(r";|//|(?<!\S)#")
_ANNOTATION = re.compile(r"\s*<[^<>]*>\s*$")  # llvm-objdump's "<.text+0x38>" after jump targets
_LABEL = re.compile(r"\s*(" + spelling.NAME + r")\s*:(?!\S)")
_UBPF_HINT = re.compile(r"%r\d|^\s*(?:" + spelling.NAME + r":\s*)?(?!call\b|exit\b|goto\b|gotol\b|may_goto\b|lock\s*\*|if\b)"
                        r"[a-z_]\w*\s+(?:%?r\d|\[|[+-]?\d|\w+\s*\[)", re.M)
_LLVM_HINT = re.compile(r"^\s*(?:\d+:\s*(?:\([0-9a-fA-F]{2}\)\s*)?)?(?:" + spelling.NAME + r":\s*)?(?:[rw]\d+\s*\S*=|if\s|goto\s|\*\(|lock\s+\*)",
                        re.M)


def detect_syntax(text):
    """"llvm" or "ubpf": whichever the first telling line is written in (LLVM when nothing tells)."""
    llvm = _LLVM_HINT.search(text)
    ubpf = _UBPF_HINT.search(text)
    if ubpf and (not llvm or ubpf.start() < llvm.start()):
        return "ubpf"
    return "llvm"


def _error_at(lineno, line, pos, end, forms, first):
    """The best explanation of why no form matched: the furthest any form got."""
    if not forms:
        token = line[first:end].split(None, 1)[0] if line[first:end].strip() else "end of line"
        raise AssemblerError(f"expected an instruction, got {token!r}", f"line {lineno}, column {first + 1}")
    best, expected = -1, None
    for form in forms:
        where, want = form.progress(line, pos, end)
        if want is not None and (where > best or where == best and want == "end of statement"):
            best, expected = where, want  # a form that is complete there says so
    while best < end and line[best].isspace():
        best += 1
    rest = line[best:end].strip()
    got = repr(re.match(r"[\w%.$]+|\S", rest).group()) if rest else "end of line"
    raise AssemblerError(f"expected {expected}, got {got}", f"line {lineno}, column {best + 1}")


def _parse_line(ctx, lineno, line, listing, forms_for, labels):
    """The full treatment of one line: listing prefixes, comments, labels, annotations, errors.

    Appends labels found to `labels`; returns the Insn or None for a line with none.
    """
    end = len(line)
    m = _COMMENT.search(line)
    if m:
        end = m.start()
    pos, code = 0, None
    m = _PREFIX.match(line, 0, end)
    if m:
        pos, code = m.end(), m.group("code")
    elif listing:
        return None
    if listing and code is None:
        return None
    m = _ANNOTATION.search(line, pos, end)
    if m:
        end = m.start()
    while True:
        m = _LABEL.match(line, pos, end)
        if m is None:
            break
        labels.append(m.group(1))
        pos = m.end()
    if not line[pos:end].strip():
        return None
    forms, first = forms_for(line, pos, end)
    for form in forms or ():
        m = form.regex.match(line, pos, end)
        if m is not None:
            ctx.lineno, ctx.m = lineno, m
            ctx.source = f"line {lineno}, column {first + 1}"
            insn = _read(form, ctx)
            break
    else:
        _error_at(lineno, line, pos, end, forms, first)
    if code is not None and int(code, 16) != insn.op.code:
        # The kernel prints ld_imm64 "(18) r1 = 0x5" exactly like a mov: the opcode decides.
        if int(code, 16) == 0x18 and insn.op.kind == "alu" and insn.op.source == "imm":
            return make(_LDDW, insn.dst, 0, 0, insn.imm & 0xFFFFFFFF, None, None, insn.source)
        raise AssemblerError(f"opcode prefix ({code}) does not match {insn.op.name} "
                             f"(opcode {insn.op.code:#04x})", f"line {lineno}, column {first + 1}")
    return insn


def parse(text, syntax="auto"):
    """Parse assembly text into unlinked Insn values.

    Labels ("name:") land on the next instruction's `label`; jump and call
    targets naming a label keep it in `ref` for pybpf.link. Each Insn's
    `source` is "line L, column C". Raises AssemblerError naming the line and
    column and what was expected there.
    """
    return _parse(text, syntax)[0]


def _parse(text, syntax, share=False):
    """(insns, labels -> slot, [(index, slot)] of label references, first duplicate label error).

    Slots are counted while parsing so that assemble() links without a scan;
    a label defined twice is reported after every line parsed, as link() would.
    With `share`, a repeated line gives the very Insn parsed from its first
    occurrence (its source names that line): for assemble(), which only
    encodes them."""
    if syntax == "auto":
        syntax = detect_syntax(text)
    if syntax == "kernel":
        syntax = "llvm"
    if syntax == "llvm":
        forms_for = _forms_for("llvm")
    elif syntax == "ubpf":
        forms_for = _forms_for("ubpf")
    else:
        raise AssemblerError(f"unknown syntax {syntax!r}: expected one of {', '.join(SYNTAXES)}")
    listing = _LISTING.search(text) is not None
    fast = None if listing else _FAST_KEYS[syntax]
    out = []
    append = out.append
    labels = []
    slots, refs, twice = {}, [], None
    pc = 0
    ctx = _Line()
    # Programs repeat statements ("r1 = r6", "exit"): parse each distinct line once.
    seen = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # Insn values hold no cycles; collecting while creating 100k of them only costs time
    try:
        for lineno, line in enumerate(text.splitlines(), 1):
            hit = seen.get(line)
            if hit is not None:
                first, col = hit
                op, ref = first.op, first.ref
                if share:
                    insn = first
                else:
                    insn = make(op, first.dst, first.src, first.off, first.imm, None, ref, f"line {lineno}, column {col}")
            else:
                stripped = line.lstrip()
                if not stripped:
                    continue
                insn = None
                if fast is not None:
                    # Fast path: a bare statement, dispatched on its first characters or mnemonic.
                    for form in fast(stripped) or ():
                        m = form.regex.match(line)
                        if m is not None:
                            col = len(line) - len(stripped) + 1
                            ctx.lineno, ctx.m, ctx.source = lineno, m, f"line {lineno}, column {col}"
                            insn = _read(form, ctx)
                            seen[line] = (insn, col)
                            break
                if insn is None:
                    insn = _parse_line(ctx, lineno, line, listing, forms_for, labels)
                    if insn is None:
                        continue
                op, ref = insn.op, insn.ref
            if labels:
                if not share:
                    insn.label = labels[0] if len(labels) == 1 else tuple(labels)
                for name in labels:
                    if name in slots and twice is None:
                        twice = AssemblerError(f"label {name!r} defined twice", insn.source)
                    slots.setdefault(name, pc)
                labels = []
            if ref is not None and ref.__class__ is str and op.target is not None:
                refs.append((len(out), pc))
            append(insn)
            pc += op.slots
    finally:
        if gc_was_enabled:
            gc.enable()
    if labels:
        # A label after the last instruction names the end: only meaningful as an error.
        raise AssemblerError(f"label {labels[-1]!r} marks no instruction", f"line {lineno}")
    if syntax == "ubpf" and "exit" not in slots and any(insn.ref == "exit" for insn in out):
        # bpf_conformance programs jump to "exit" meaning the first exit instruction.
        pc = 0
        for insn in out:
            if insn.op.kind == "exit":
                slots["exit"] = pc
                if not share:
                    insn.label = "exit" if insn.label is None else (
                        (insn.label, "exit") if isinstance(insn.label, str) else tuple(insn.label) + ("exit",))
                break
            pc += insn.op.slots
    return out, slots, refs, twice


def assemble(text, syntax="auto"):
    """Assemble LLVM/kernel or ubpf syntax text into eBPF bytecode."""
    try:
        insns, slots, refs, twice = _parse(text, syntax, share=True)
        if twice is not None:
            raise twice
        for index, pc in refs:  # link(), knowing where the labels and references are
            insns[index] = resolve(insns[index], pc, slots)
        # encode(), remembering each shared instruction's bytes by identity (all are alive here)
        codes = {}
        out = []
        append = out.append
        for insn in insns:
            code = codes.get(id(insn))
            if code is None:
                code = codes[id(insn)] = insn.encode()  # validates
            append(code)
        return b"".join(out)
    except AssemblerError:
        # Shared instructions name the first line written so; the plain pipeline names the very line.
        return encode(link(parse(text, syntax)))
