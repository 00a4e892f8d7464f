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
import sys

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


# --- assembling: the forms a line may be, joined into one regex -------------------------

class _Joined:
    """The forms that may read a line (those of its first characters or mnemonic), joined into
    one regex that reads the line once: consecutive forms share their common first pieces, and
    an empty group ending each form tells by m.lastindex which form read it. Forms keep their
    order, so the first form whose pattern reads the line is the one that does, as when each is
    tried in turn (parse()). encoders[m.lastindex](m) gives the bytes, or None for the slow path
    (each form's encode(m), written on first use).

    Separators are possessive and fields atomic: no body starts with whitespace, and none can
    start with what the field before it could give back (a digit, a word character), so
    backtracking never finds another reading. The separators come before the alternatives,
    which then start with a literal or a group: the regex engine skips a literal at a glance."""

    def __init__(self, forms):
        out, leaves = [], {}
        groups = 0

        def walk(entries, depth):
            nonlocal groups
            runs, i = [], 0  # consecutive entries with the same next piece (None: the end)
            while i < len(entries):
                form, _ = entries[i]
                piece = form.pieces[depth] if depth < len(form.pieces) else None
                j = i + 1
                while piece is not None and j < len(entries) and entries[j][0].pieces[depth:depth + 1] == (piece,):
                    j += 1
                runs.append((piece, entries[i:j]))
                i = j
            seps = {piece[0] if piece else r"\s*" for piece, _ in runs}
            shared = seps.pop() if len(seps) == 1 else ""
            out.append(_possessive(shared) + "(?:")
            for n, (piece, run) in enumerate(runs):
                if n:
                    out.append("|")
                if piece is None:
                    groups += 1
                    out.append(("" if shared else _possessive(r"\s*")) + "$()")
                    leaves[groups] = run[0]  # a form that reads the same as one before it never gets here
                    continue
                sep, body, held = piece
                if held and _ATOMIC and body[1] != "?":
                    body = "((?>" + body[1:-1] + "))"
                out.append(("" if shared else _possessive(sep)) + body)
                groups += held
                walk([(f, g + [groups] if held else g) for f, g in run], depth + 1)
            out.append(")")

        walk([(form, []) for form in forms], 0)
        self.match = re.compile("".join(out)).match
        self.encoders = [None] * (groups + 1)
        for marker, (form, fields) in leaves.items():
            self.encoders[marker] = self._first_use(marker, form, fields)

    def _first_use(self, marker, form, fields):
        def encode(m):
            self.encoders[marker] = form.encoder(fields)
            return self.encoders[marker](m)
        return encode


_ATOMIC = sys.version_info >= (3, 11)  # possessive repeats and atomic groups


def _possessive(sep):
    """\\s* as \\s*+ (Python 3.11 has possessive repeats; before, the same match, more slowly)."""
    return sep + "+" if sep and _ATOMIC else sep


_INDEX = {"llvm": _BY_PREFIX, "ubpf": _BY_WORD["ubpf"]}
_JOINED = {}  # the forms' ids -> _Joined: every register ("r0" ... "w9") starts the same forms
_NO_READER = (lambda line: None, None)


def _reader(syntax, readers, line):
    """(match, encoders) for a line that begins with `key` (its first two characters, or
    its mnemonic in ubpf), remembered in `readers` under that key."""
    stripped = line.lstrip()
    key = stripped[:2] if syntax == "llvm" else stripped.partition(" ")[0]
    reader = readers.get(key)
    if reader is None:
        forms = _INDEX[syntax].get(key)
        reader = _NO_READER
        if forms:
            same = tuple(map(id, forms))  # the forms live as long as the module
            joined = _JOINED.get(same)
            if joined is None:
                joined = _JOINED[same] = _Joined(forms)
            reader = (joined.match, joined.encoders)
        readers[key] = reader
    return reader


_READERS = {"llvm": {}, "ubpf": {}}  # syntax -> {key: (match, encoders)}


class _SLOW:
    """The readers of a listing: its lines go through _parse_line, which knows their prefixes."""

    @staticmethod
    def get(key):
        return _NO_READER
_CACHE_CHECK = 4096  # the line at which assemble() judges whether lines repeat


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


def _syntax(text, syntax):
    """(the reader's syntax, "llvm" or "ubpf"; whether the text is a listing)."""
    if syntax == "auto":
        syntax = detect_syntax(text)
    if syntax == "kernel":
        syntax = "llvm"
    if syntax not in ("llvm", "ubpf"):
        raise AssemblerError(f"unknown syntax {syntax!r}: expected one of {', '.join(SYNTAXES)}")
    return syntax, _LISTING.search(text) is not None


def _parse(text, syntax):
    """(insns, labels -> slot, [(index, slot)] of label references, first duplicate label error).

    Slots are counted while parsing so that assemble() links without a scan;
    a label defined twice is reported after every line parsed, as link() would."""
    syntax, listing = _syntax(text, syntax)
    forms_for = _forms_for(syntax)
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
                insn.label = "exit" if insn.label is None else (
                    (insn.label, "exit") if isinstance(insn.label, str) else tuple(insn.label) + ("exit",))
                break
            pc += insn.op.slots
    return out, slots, refs, twice


def assemble(text, syntax="auto"):
    """Assemble LLVM/kernel or ubpf syntax text into eBPF bytecode."""
    try:
        code = _assemble(text, syntax)
        if code is not None:
            return code
    except AssemblerError:
        pass
    # What the quick reading leaves (an error, a label defined twice or marking no instruction,
    # ubpf's implicit "exit" label) the plain pipeline says, naming the very line.
    return encode(link(parse(text, syntax)))


def _assemble(text, syntax):
    """The bytes of the text, or None when assemble() must take the plain pipeline.

    A bare statement is read by its line's _Joined straight to bytes, and a repeated line costs
    a dict lookup; the rest (labels, comments, listings, label references, what the joined
    reader leaves) goes through _parse_line to an Insn, as parse() reads it."""
    syntax, listing = _syntax(text, syntax)
    forms_for = _forms_for(syntax)
    readers = _SLOW if listing else _READERS[syntax]
    llvm = syntax == "llvm"
    out = []
    append = out.append
    labels, slots, refs = [], {}, []  # slots and refs by index in out, until the end
    ctx = _Line()
    # line -> its bytes, for lines read without _parse_line (no label on them). Programs repeat
    # lines ("r1 = r6", "exit"); text that does not (under 1 in 8 of the first lines) goes
    # without: looking up every line would cost more than the few it finds.
    seen = {}
    cached, check = True, _CACHE_CHECK
    gc_was_enabled = gc.isenabled()
    gc.disable()  # nothing made here holds a cycle; collecting while making it only costs time
    try:
        for lineno, line in enumerate(text.splitlines(), 1):
            if cached:
                code = seen.get(line)
                if code is not None:
                    append(code)
                    continue
                if lineno >= check:
                    cached, check = len(seen) < lineno - (lineno >> 3), sys.maxsize
            reader = readers.get(line[:2] if llvm else line.partition(" ")[0])
            if reader is None:
                reader = _reader(syntax, readers, line)
            m = reader[0](line)
            if m is not None:
                code = reader[1][m.lastindex](m)
                if code is not None:
                    if cached:
                        seen[line] = code
                    append(code)
                    continue
            insn = _parse_line(ctx, lineno, line, listing, forms_for, labels)
            if labels:  # they name the next instruction, wherever it comes from
                for name in labels:
                    if name in slots:
                        return None  # defined twice
                    slots[name] = len(out)
                labels.clear()
            if insn is None:
                continue
            ref = insn.ref
            if ref is not None and ref.__class__ is str and insn.op.target is not None:
                refs.append(len(out))
                append(insn)
            else:
                append(insn.encode())  # validates
    finally:
        if gc_was_enabled:
            gc.enable()
    if slots and max(slots.values()) == len(out) or syntax == "ubpf" and refs and "exit" not in slots:
        return None  # a label after the last instruction; ubpf's "exit"
    if refs:  # link(), knowing where the labels and references are
        pcs = [0]
        for code in out:
            pcs.append(pcs[-1] + (len(code) >> 3 if code.__class__ is bytes else code.op.slots))
        slots = {name: pcs[index] for name, index in slots.items()}
        for index in refs:
            out[index] = resolve(out[index], pcs[index], slots).encode()
    return b"".join(out)
