"""Text assembler: LLVM/kernel syntax and ubpf syntax -> Insn values -> bytes.

    r1 = *(u32 *)(r2 + 4)          LLVM (llvm-mc) and kernel (verifier log, bpftool) syntax
    ldxw %r1, [%r2+4]              ubpf / bpf_conformance syntax

`parse(text)` gives unlinked Insn values (labels and label references kept,
`source` = "line L, column C"); `assemble(text)` links and encodes them.

Every statement form is written once as a template such as
    "{dst:reg} = *({size:size} *)({src:reg} {off:off})"
which compiles to one regex for the fast path, and walks item by item on
failure to say exactly where a line stops making sense and what was expected
there. Instruction rows come from pybpf.isa (names, ALU/JMP C operators,
atomic ops); this module only knows the spelling.

Pasting a verifier log, `bpftool prog dump xlated` or `llvm-objdump -d`
output works: instruction-number prefixes ("12:"), opcode prefixes ("(b7)"),
raw bytes and trailing "; ..." state are ignored, and when the text is such a
listing, lines without an "N: (xx)" prefix (register states, headers) are
skipped.
"""
import gc
import re

from . import helpers, isa
from ..errors import AssemblerError
from .insn import encode, make
from .link import link, resolve

SYNTAXES = ("auto", "llvm", "kernel", "ubpf")  # kernel (verifier log, bpftool) and LLVM share one parser

# --- instruction rows by spelling, all derived from the table ------------

_ALU = {(op.c_op, op.bits, op.source): op for op in isa.OPS if op.kind == "alu"}
_JMP = {(op.c_op, op.bits, op.source): op for op in isa.OPS if op.kind == "jmp"}
_NEG = {op.bits: op for op in isa.OPS if op.kind == "neg"}
_MOVSX = {(op.operation, op.bits): op for op in isa.OPS if op.kind == "movsx"}
_BY_KIND_SIZE = {(op.kind, op.bits): op for op in isa.OPS
                 if op.kind in ("ldx", "ldxs", "st", "stx", "ld_abs", "ld_ind")}
_ATOMIC = {(op.operation, op.bits): op for op in isa.OPS if op.kind == "atomic"}
_LOCK = {(op.c_op, op.bits): op for op in isa.OPS if op.kind == "atomic" and not op.fixed_value("imm") & isa.FETCH}
_PSEUDO = {op.operation: op for op in isa.OPS if op.kind == "ld_imm64"}
_ONE = {name: isa.lookup(name) for name in ("ja", "gotol", "may_goto", "call", "call_local", "call_kfunc", "callx",
                                             "exit")}
_MEM_BITS = {"u8": 8, "u16": 16, "u32": 32, "u64": 64, "s8": 8, "s16": 16, "s32": 32}

_REGS = {f"{prefix}{n}": (n, bits) for n in range(isa.MAX_REG + 1) for prefix, bits in (("r", 64), ("w", 32))}
_UREGS = {f"{prefix}{n}": n for n in range(isa.MAX_REG + 1) for prefix in ("%r", "r")}

_NUM = r"(?:0[xX][0-9a-fA-F]+|\d+)"
_NAME = r"[A-Za-z_.$][\w.$]*"


def _alternation(words):
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


def _number(text):
    """Parse "12", "-0x1f", "+ 4", "+ -3" (kernel prints "+ %d")."""
    text = text.replace(" ", "").replace("\t", "")
    sign = 1
    while text[:1] in "+-" and text:
        if text[0] == "-":
            sign = -sign
        text = text[1:]
    return sign * (int(text, 16) if text[1:2] in "xX" else int(text))


def _s32(value):
    """Immediates print signed (LLVM) or as u32 (kernel jumps): keep them signed."""
    return value - (1 << 32) if (1 << 31) <= value < (1 << 32) else value


# --- templates -------------------------------------------------------------

class _Field:
    __slots__ = ("regex", "desc", "word", "words")

    def __init__(self, regex, desc, word=True, words=()):
        self.regex, self.desc, self.word, self.words = regex, desc, word, tuple(words)


def _mnemonics(words, desc):
    """A field matching exactly one of `words` (a ubpf mnemonic), indexed by them."""
    return _Field("(?:" + _alternation(words) + r")(?!\w)", desc, words=words)


# "lock fetch add32" and "lock_fetch_add32" -> the row; xchg/cmpxchg always fetch, "fetch" is optional for them.
_LOCK_NAMES = {}
for _op in isa.OPS:
    if _op.kind == "atomic":
        _stem = _op.name.removeprefix("lock_")
        _LOCK_NAMES[_stem.replace("fetch_", "fetch ")] = _op
        if _op.operation in ("xchg", "cmpxchg"):
            _LOCK_NAMES["fetch " + _stem] = _op
        _LOCK_NAMES[_op.name] = _op

_FIELDS = {
    "reg": _Field(r"[rw]\d+", "a register"),
    "ureg": _Field(r"%?r\d+", "a register"),
    "imm": _Field(r"[+-]?\s*" + _NUM, "an immediate"),
    "off": _Field(r"[+-]\s*[+-]?" + _NUM, "an offset like +8 or -8", word=False),
    "uoff": _Field(r"[+-]\s*[+-]?" + _NUM, "an offset like +8", word=False),
    "target": _Field(r"(?:pc)?[+-]\s*" + _NUM + "|" + _NAME, "a jump target (+N, pc+N or a label)"),
    "name": _Field(_NAME, "a name"),
    "callee": _Field(r"pc[+-]" + _NUM + r"|[+-]?" + _NUM + "|" + _NAME + r"(?:-[\w.$]+)*(?:#-?\d+)?",
                     "a helper id or name, pc+N or a label"),
    "size": _Field(r"[us](?:8|16|32|64)", "a size like u32"),
    "sx": _Field(r"s(?:8|16|32)", "s8, s16 or s32"),
    "aluop": _Field(_alternation(op.c_op for op in isa.ALU_OPS), "an ALU operator like +=", word=False),
    "lockop": _Field(_alternation(op.c_op for op in isa.ATOMIC_OPS if op.c_op), "an atomic operator like +=",
                     word=False),
    "cond": _Field(_alternation(c.c_op for c in isa.JMP_CONDS), "a comparison like == or s>", word=False),
    "endop": _Field(_alternation(op.name for op in isa.OPS if op.kind in ("end", "bswap")), "be16, le32 or bswap64"),
    "afn": _Field(r"atomic(?:64)?_(?:fetch_(?:add|and|or|xor)|xchg)", "atomic_fetch_add, atomic_xchg, ..."),
    "acmpxchg": _Field(r"atomic(?:64)?_cmpxchg", "atomic_cmpxchg"),
    "xchg": _Field(r"xchg_64|xchg32_32", "xchg_64 or xchg32_32"),
    "cmpxchg": _Field(r"cmpxchg_64|cmpxchg32_32", "cmpxchg_64 or cmpxchg32_32"),
    "mapref": _Field(r"map\[(?:id|fd|idx):\d+\](?:\[0\])?(?:\s*\+\s*\d+)?", "map[fd:N] or map[fd:N][0]+OFF"),
    "lockname": _Field(r"(?:fetch\s+)?[a-z]+(?:32)?", "an atomic operation like add or fetch add32"),
    "callmode": _Field(r"helper|runtime", "helper or runtime"),
    "local": _Field(r"local", "local"),
    "mapmode": _Field(r"fd|idx", "fd or idx"),
    "m_jump": _mnemonics(("ja", "ja32", "gotol", "may_goto"), "ja, gotol or may_goto"),
    "m_swap": _mnemonics(("swap16", "swap32", "swap64"), "swap16, swap32 or swap64"),
    "m_lock": _mnemonics([n for n in _LOCK_NAMES if n.startswith("lock_")], "a lock_ mnemonic"),
}
for _kind in ("alu", "neg", "end", "bswap", "movsx", "jmp", "ld_imm64", "ld_abs", "ld_ind", "ldx", "ldxs", "st", "stx"):
    _FIELDS["m_" + _kind] = _mnemonics(sorted({op.name for op in isa.OPS if op.kind == _kind}), f"a {_kind} mnemonic")

_TEMPLATE_PART = re.compile(r"\{(\w+):(\w+)(\?)?\}|( )|([^{ ]+)")
_WS = r"\s*"


class _Form:
    """One statement form: a template compiled to a fast regex, plus a builder."""

    def __init__(self, template, build):
        self.template, self.build = template, build
        items = []  # (body regex, desc, group, optional, word_start, word_end, spaced)
        spaced = False
        for m in _TEMPLATE_PART.finditer(template):
            name, ftype, optional, space, literal = m.groups()
            if space:
                spaced = True
                continue
            if name:
                f = _FIELDS[ftype]
                items.append((f"(?P<{name}>{f.regex})", f.desc, name, bool(optional), f.word, f.word, spaced))
            else:
                items.append((re.escape(literal), repr(literal), None, False,
                              literal[0].isalnum(), literal[-1].isalnum(), spaced))
            spaced = False
        parts, self.steps = [], []
        prev_word = False
        for body, desc, group, optional, word_start, word_end, spaced in items:
            sep = r"\s+" if spaced and prev_word and word_start else _WS
            piece = f"(?:{sep}{body})?" if optional else sep + body
            parts.append(piece)
            self.steps.append((re.compile(piece), desc, optional))
            prev_word = word_end
        self.regex = re.compile("".join(parts) + r"\s*$")

    def progress(self, line, pos, end):
        """How far this form gets into line[pos:end]: (position, what was expected there)."""
        for step, desc, _ in self.steps:
            m = step.match(line, pos, end)
            if m is None:
                return pos, desc
            pos = m.end()
        if line[pos:end].strip():
            return pos, "end of statement"
        return end, None


# --- per-line context for builders ----------------------------------------

class _Line:
    __slots__ = ("lineno", "text", "m", "source")

    def fail(self, group, message):
        col = self.m.start(group) + 1 if group else self.col
        raise AssemblerError(message, f"line {self.lineno}, column {col}")

    @property
    def col(self):
        return self.m.start() + 1 + (len(self.m.group()) - len(self.m.group().lstrip()))

    def reg(self, group, bits=None):
        """Register number of an LLVM register group; its width must match `bits` when given."""
        name = self.m.group(group)
        found = _REGS.get(name)
        if found is None:
            self.fail(group, f"expected a register, got {name!r}")
        if bits is not None and found[1] != bits:
            want = "w" if bits == 32 else "r"
            self.fail(group, f"expected a {bits}-bit register ({want}{found[0]}), got {name!r}")
        return found

    def ureg(self, group):
        name = self.m.group(group)
        n = _UREGS.get(name)
        if n is None:
            self.fail(group, f"expected a register, got {name!r}")
        return n

    def num(self, group, default=0):
        """The number in `group`; `default` when the form has no such group or it matched nothing."""
        try:
            text = self.m.group(group)
        except IndexError:
            return default
        if text is None:
            return default
        try:
            return int(text, 0)
        except ValueError:  # "+ 4", "010", "+ -3"
            return _number(text)

    def target(self, group):
        """(offset, label) of a jump target: "+3", "pc-1", or a label."""
        text = self.m.group(group)
        if text[0] in "+-" or (text[:2] == "pc" and text[2:3] in ("+", "-")):
            return _number(text.removeprefix("pc")), None
        return 0, text


def _insn(op, dst=0, src=0, off=0, imm=0, ref=None, source=None):
    return make(op, dst, src, off, imm, None, ref, source)


# --- LLVM / kernel syntax builders -----------------------------------------

def _alu(c, source):
    dst, bits = c.reg("dst")
    op_text = c.m.group("op")
    if source == "reg":
        src = c.reg("src", bits)[0]
        return _insn(_ALU[(op_text, bits, "reg")], dst, src, source=c.source)
    imm = c.num("imm")
    if op_text == "=" and bits == 64 and not -(1 << 31) <= imm < (1 << 32):
        return _insn(_PSEUDO["lddw"], dst, imm=imm, source=c.source)  # a 64-bit constant needs ld_imm64
    return _insn(_ALU[(op_text, bits, "imm")], dst, imm=_s32(imm), source=c.source)


def _ld64(c):
    return _insn(_PSEUDO["lddw"], c.reg("dst", 64)[0], imm=c.num("imm"), source=c.source)


def _map_load(c):
    """bpftool's map[id:N], map[id:N][0]+OFF, map[idx:N], map[idx:N]+OFF (and map[fd:N])."""
    dst = c.reg("dst", 64)[0]
    text = c.m.group("map").replace(" ", "")
    kind, rest = text[4:].split(":", 1)
    number, _, tail = rest.partition("]")
    value = "+" in tail
    offset = int(tail.rsplit("+", 1)[1]) if value else 0
    if kind == "idx":
        op = _PSEUDO["ld_map_idx_value" if value else "ld_map_idx"]
    else:
        op = _PSEUDO["ld_map_value" if value else "ld_map_fd"]
    return _insn(op, dst, imm=int(number) | (offset << 32), source=c.source)


def _subprog(c):
    off, label = c.target("target")
    # a 32-bit pc-relative offset in the low half; the second slot's imm is 0 (as link() writes it)
    return _insn(_PSEUDO["ld_func"], c.reg("dst", 64)[0], imm=off & 0xFFFFFFFF, ref=label, source=c.source)


def _btf_id(c):
    return _insn(_PSEUDO["ld_btf_id"], c.reg("dst", 64)[0], imm=c.num("imm"), source=c.source)


def _ld_pseudo(c):
    """LLVM's "ld_pseudo r1, 2, 0x5": ld_imm64 with an explicit src (pseudo) field."""
    pseudo = c.num("src")
    op = isa.decode_op(isa.LD | isa.MODE_IMM | isa.SIZE_DW, 0, pseudo, 0, 0)
    if op is None:
        c.fail("src", f"no ld_imm64 pseudo source {pseudo}")
    return _insn(op, c.reg("dst", 64)[0], imm=c.num("imm"), source=c.source)


def _movsx(c):
    dst, bits = c.reg("dst")
    op = _MOVSX.get((c.m.group("sx"), bits))
    if op is None:
        c.fail("sx", f"no {bits}-bit sign extension from {c.m.group('sx')}")
    return _insn(op, dst, c.reg("src", bits)[0], source=c.source)


def _same_reg(c, dst, bits):
    src = c.reg("src", bits)[0]
    if src != dst:
        c.fail("src", f"expected the destination register again, got {c.m.group('src')!r}")


def _neg(c):
    dst, bits = c.reg("dst")
    _same_reg(c, dst, bits)
    return _insn(_NEG[bits], dst, source=c.source)


def _end(c):
    dst, _ = c.reg("dst")
    src = c.reg("src")[0]
    if src != dst:
        c.fail("src", f"expected the destination register again, got {c.m.group('src')!r}")
    return _insn(isa.BY_NAME[(c.m.group("end"), None)], dst, source=c.source)


def _mem_op(c, kind):
    size = c.m.group("size")
    op = _BY_KIND_SIZE.get((kind if size[0] == "u" else kind + "s", _MEM_BITS[size]))
    if op is None:
        c.fail("size", f"no {kind} of size {size}")
    return op


def _ldx(c):
    return _insn(_mem_op(c, "ldx"), c.reg("dst")[0], c.reg("src", 64)[0], c.num("off"), source=c.source)


def _ld_abs(c):
    return _insn(_mem_op(c, "ld_abs"), imm=_s32(c.num("imm")), source=c.source)


def _ld_ind(c):
    return _insn(_mem_op(c, "ld_ind"), src=c.reg("src", 64)[0], imm=_s32(c.num("imm")), source=c.source)


def _st(c):
    return _insn(_mem_op(c, "st"), c.reg("dst", 64)[0], off=c.num("off"), imm=_s32(c.num("imm")), source=c.source)


def _stx(c):
    return _insn(_mem_op(c, "stx"), c.reg("dst", 64)[0], c.reg("src")[0], c.num("off"), source=c.source)


def _atomic_op(c, name, bits, group="size"):
    op = _ATOMIC.get((name, bits))
    if op is None:
        c.fail(group, f"no {bits}-bit atomic {name}")
    return op


def _atomic_bits(c):
    size = c.m.group("size")
    if size not in ("u32", "u64"):
        c.fail("size", f"atomics are u32 or u64, got {size!r}")
    return _MEM_BITS[size]


def _lock(c):
    bits = _atomic_bits(c)
    op = _LOCK[(c.m.group("op"), bits)]
    return _insn(op, c.reg("dst", 64)[0], c.reg("src")[0], c.num("off"), source=c.source)


def _fetch_result(c, src):
    """The register a fetching atomic writes must be its source register."""
    if c.reg("ret")[0] != src:
        c.fail("ret", f"expected {c.m.group('src')!r} (the source register receives the old value), "
                      f"got {c.m.group('ret')!r}")


def _atomic_fetch(c):
    """Kernel atomic64_fetch_add((u64 *)(r1 +0), r2) and LLVM atomic_fetch_add((u64 *)(r1 + 0), r2)."""
    bits = _atomic_bits(c)
    name = c.m.group("fn").split("_", 1)[1]
    src = c.reg("src")[0]
    _fetch_result(c, src)
    return _insn(_atomic_op(c, name, bits), c.reg("dst", 64)[0], src, c.num("off"), source=c.source)


def _r0(c, group):
    if c.reg(group)[0] != 0:
        c.fail(group, f"expected r0 (cmpxchg compares with r0), got {c.m.group(group)!r}")


def _atomic_cmpxchg(c):
    bits = _atomic_bits(c)
    _r0(c, "ret")
    _r0(c, "old")
    return _insn(_atomic_op(c, "cmpxchg", bits), c.reg("dst", 64)[0], c.reg("src")[0], c.num("off"),
                 source=c.source)


def _llvm_xchg(c):
    bits = 64 if c.m.group("fn") == "xchg_64" else 32
    src = c.reg("src", bits)[0]
    _fetch_result(c, src)
    return _insn(_ATOMIC[("xchg", bits)], c.reg("dst", 64)[0], src, c.num("off"), source=c.source)


def _llvm_cmpxchg(c):
    bits = 64 if c.m.group("fn") == "cmpxchg_64" else 32
    _r0(c, "ret")
    _r0(c, "old")
    return _insn(_ATOMIC[("cmpxchg", bits)], c.reg("dst", 64)[0], c.reg("src", bits)[0], c.num("off"),
                 source=c.source)


def _jmp(c, source):
    dst, bits = c.reg("dst")
    op = _JMP[(c.m.group("op"), bits, source)]
    off, label = c.target("target")
    if source == "reg":
        return _insn(op, dst, c.reg("src", bits)[0], off, ref=label, source=c.source)
    return _insn(op, dst, off=off, imm=_s32(c.num("imm")), ref=label, source=c.source)


def _goto(name):
    op = _ONE[name]

    def build(c):
        off, label = c.target("target")
        if name == "gotol":
            return _insn(op, imm=off, ref=label, source=c.source)
        return _insn(op, off=off, ref=label, source=c.source)
    return build


def _call_named(c, name, number):
    """call NAME / call NAME#N: a helper when NAME is one, a kfunc (kernel log) or a label otherwise."""
    if name == "unknown" or name in helpers.BY_NAME or name.removeprefix("bpf_") in helpers.BY_NAME:
        helper_id = number if number is not None else helpers.lookup(name).id
        return _insn(_ONE["call"], imm=helper_id, source=c.source)
    if number is not None:
        return _insn(_ONE["call_kfunc"], off=c.num("off"), imm=number, source=c.source)
    return _insn(_ONE["call_local"], ref=name, source=c.source)


def _call(c):
    text = c.m.group("callee")
    if text.startswith("pc") and text[2:3] in ("+", "-"):
        return _insn(_ONE["call_local"], imm=_number(text[2:]), source=c.source)
    if text[0] in "+-0123456789":
        return _insn(_ONE["call"], imm=_s32(_number(text)), source=c.source)
    name, _, number = text.partition("#")
    return _call_named(c, name, int(number) if number else None)


def _kfunc(c):
    return _insn(_ONE["call_kfunc"], off=c.num("off"), imm=_s32(c.num("imm")), source=c.source)


def _exit(c):
    return _insn(_ONE["exit"], source=c.source)


def _callx(c):
    return _insn(_ONE["callx"], c.reg("dst", 64)[0], source=c.source)


_R = "{dst:reg} = "
_MEM = "*({size:size} *)({dst:reg} {off:off})"
_LLVM_FORMS = {
    "reg": [
        _Form("{dst:reg} {op:aluop} {imm:imm}", lambda c: _alu(c, "imm")),
        _Form("{dst:reg} {op:aluop} {src:reg}", lambda c: _alu(c, "reg")),
        _Form(_R + "*({size:size} *)({src:reg} {off:off})", _ldx),
        _Form(_R + "{imm:imm} ll", _ld64),
        _Form(_R + "{map:mapref}", _map_load),
        _Form(_R + "subprog[{target:target}]", _subprog),
        _Form(_R + "btf_id[{imm:imm}]", _btf_id),
        _Form(_R + "({sx:sx}){src:reg}", _movsx),
        _Form(_R + "-{src:reg}", _neg),
        _Form(_R + "{end:endop} {src:reg}", _end),
        _Form(_R + "*({size:size} *)skb[{imm:imm}]", _ld_abs),
        _Form(_R + "*({size:size} *)skb[{src:reg}{imm:off?}]", _ld_ind),
        _Form("{ret:reg} = {fn:afn}(({size:size} *)({dst:reg} {off:off}), {src:reg})", _atomic_fetch),
        _Form("{ret:reg} = {fn:acmpxchg}(({size:size} *)({dst:reg} {off:off}), {old:reg}, {src:reg})",
              _atomic_cmpxchg),
        _Form("{ret:reg} = {fn:xchg}({dst:reg} {off:off}, {src:reg})", _llvm_xchg),
        _Form("{ret:reg} = {fn:cmpxchg}({dst:reg} {off:off}, {old:reg}, {src:reg})", _llvm_cmpxchg),
    ],
    "*": [
        _Form(_MEM + " = {src:reg}", _stx),
        _Form(_MEM + " = {imm:imm}", _st),
    ],
    "lock": [_Form("lock " + _MEM + " {op:lockop} {src:reg}", _lock)],
    "if": [
        _Form("if {dst:reg} {op:cond} {src:reg} goto {target:target}", lambda c: _jmp(c, "reg")),
        _Form("if {dst:reg} {op:cond} {imm:imm} goto {target:target}", lambda c: _jmp(c, "imm")),
    ],
    "goto": [_Form("goto {target:target}", _goto("ja"))],
    "gotol": [_Form("gotol {target:target}", _goto("gotol"))],
    "may_goto": [_Form("may_goto {target:target}", _goto("may_goto"))],
    "call": [
        _Form("call {callee:callee}", _call),
        _Form("call {callee:callee} off {off:imm}", _call),
        _Form("call kfunc {imm:imm}", _kfunc),
        _Form("call kfunc {imm:imm}, {off:imm}", _kfunc),
    ],
    "callx": [_Form("callx {dst:reg}", _callx)],
    "exit": [_Form("exit", _exit)],
    "ld_pseudo": [_Form("ld_pseudo {dst:reg}, {src:imm}, {imm:imm}", _ld_pseudo)],
}
_LLVM_KEY = re.compile(r"\s*(\*|[A-Za-z_]\w*)")


def _llvm_forms(line, pos, end):
    m = _LLVM_KEY.match(line, pos, end)
    if m is None:
        return None, pos
    word = m.group(1)
    forms = _LLVM_FORMS.get(word)
    if forms is None and word[:1] in "rw" and word[1:].isdigit():
        forms = _LLVM_FORMS["reg"]
    return forms, m.start(1)


# --- ubpf syntax builders ---------------------------------------------------

def _u_alu(c, source):
    op = isa.BY_NAME[(c.m.group("m"), source)]
    if source == "reg":
        return _insn(op, c.ureg("dst"), c.ureg("src"), source=c.source)
    return _insn(op, c.ureg("dst"), imm=_s32(c.num("imm")), source=c.source)


def _u_unary(c):
    name = c.m.group("m")
    op = isa.BY_NAME[("bswap" + name[4:] if name.startswith("swap") else name, None)]
    return _insn(op, c.ureg("dst"), source=c.source)


def _u_movsx(c):
    return _insn(isa.BY_NAME[(c.m.group("m"), None)], c.ureg("dst"), c.ureg("src"), source=c.source)


def _u_jmp(c, source):
    op = isa.BY_NAME[(c.m.group("m"), source)]
    off, label = c.target("target")
    if source == "reg":
        return _insn(op, c.ureg("dst"), c.ureg("src"), off, ref=label, source=c.source)
    return _insn(op, c.ureg("dst"), off=off, imm=_s32(c.num("imm")), ref=label, source=c.source)


def _u_jump(c):
    name = c.m.group("m")
    return _goto("gotol" if name == "ja32" else "ja" if name == "ja" else name)(c)


def _u_call(c):
    mode = c.m.groupdict().get("mode")
    if mode == "local":
        off, label = c.target("target")
        return _insn(_ONE["call_local"], imm=off, ref=label, source=c.source)
    number = _s32(c.num("imm"))
    return _insn(_ONE["call_kfunc" if mode == "runtime" else "call"], imm=number, source=c.source)


def _u_callx(c):
    return _insn(_ONE["callx"], c.ureg("dst"), source=c.source)


def _u_call_name(c):
    return _call_named(c, c.m.group("name"), None)


def _u_call_local(c):
    off, label = c.target("target")
    return _insn(_ONE["call_local"], imm=off, ref=label, source=c.source)


def _u_call_kfunc(c):
    return _insn(_ONE["call_kfunc"], off=c.num("off"), imm=_s32(c.num("imm")), source=c.source)


def _u_ld_imm64(c):
    op, imm = isa.BY_NAME[(c.m.group("m"), None)], c.num("imm")
    if op.name != "lddw" and -(1 << 31) <= imm < 0:
        imm &= 0xFFFFFFFF  # pseudo loads hold a 32-bit value (fd, id, offset) in the low half
    return _insn(op, c.ureg("dst"), imm=imm, source=c.source)


def _u_ld_imm64_halves(c):
    """"ld_map_value %r1, 5, 8": the low and high 32 bits of the 64-bit immediate."""
    imm = (c.num("lo") & 0xFFFFFFFF) | (c.num("hi") << 32)
    return _insn(isa.BY_NAME[(c.m.group("m"), None)], c.ureg("dst"), imm=imm, source=c.source)


def _u_map_by(c):
    op = _PSEUDO["ld_map_fd" if c.m.group("how") == "fd" else "ld_map_idx"]
    return _insn(op, c.ureg("dst"), imm=c.num("imm"), source=c.source)


def _u_ld_func(c):
    off, label = c.target("target")
    return _insn(_PSEUDO["ld_func"], c.ureg("dst"), imm=off & 0xFFFFFFFF, ref=label, source=c.source)


def _u_ld_abs(c):
    return _insn(isa.BY_NAME[(c.m.group("m"), None)], imm=_s32(c.num("imm")), source=c.source)


def _u_ld_ind(c):
    return _insn(isa.BY_NAME[(c.m.group("m"), None)], src=c.ureg("src"), imm=_s32(c.num("imm")), source=c.source)


def _u_ldx(c):
    return _insn(isa.BY_NAME[(c.m.group("m"), None)], c.ureg("dst"), c.ureg("src"), c.num("off"), source=c.source)


def _u_st(c):
    return _insn(isa.BY_NAME[(c.m.group("m"), None)], c.ureg("dst"), off=c.num("off"), imm=_s32(c.num("imm")),
                 source=c.source)


def _u_stx(c):
    return _insn(isa.BY_NAME[(c.m.group("m"), None)], c.ureg("dst"), c.ureg("src"), c.num("off"), source=c.source)


def _u_lock(c):
    name = " ".join(c.m.group("op").split())
    op = _LOCK_NAMES.get(name)
    if op is None:
        c.fail("op", f"expected an atomic operation (add, fetch add32, xchg, cmpxchg32 ...), got {name!r}")
    return _insn(op, c.ureg("dst"), c.ureg("src"), c.num("off"), source=c.source)


def _u_lock_named(c):
    return _insn(_LOCK_NAMES[c.m.group("m")], c.ureg("dst"), c.ureg("src"), c.num("off"), source=c.source)


_UMEM = "[{dst:ureg}{off:uoff?}]"
_UBPF_FORMS = [
    _Form("{m:m_alu} {dst:ureg}, {imm:imm}", lambda c: _u_alu(c, "imm")),
    _Form("{m:m_alu} {dst:ureg}, {src:ureg}", lambda c: _u_alu(c, "reg")),
    _Form("{m:m_ldx} {dst:ureg}, [{src:ureg}{off:uoff?}]", _u_ldx),
    _Form("{m:m_ldxs} {dst:ureg}, [{src:ureg}{off:uoff?}]", _u_ldx),
    _Form("{m:m_stx} " + _UMEM + ", {src:ureg}", _u_stx),
    _Form("{m:m_st} " + _UMEM + ", {imm:imm}", _u_st),
    _Form("{m:m_jmp} {dst:ureg}, {imm:imm}, {target:target}", lambda c: _u_jmp(c, "imm")),
    _Form("{m:m_jmp} {dst:ureg}, {src:ureg}, {target:target}", lambda c: _u_jmp(c, "reg")),
    _Form("{m:m_jump} {target:target}", _u_jump),
    _Form("{m:m_neg} {dst:ureg}", _u_unary),
    _Form("{m:m_end} {dst:ureg}", _u_unary),
    _Form("{m:m_bswap} {dst:ureg}", _u_unary),
    _Form("{m:m_swap} {dst:ureg}", _u_unary),
    _Form("{m:m_movsx} {dst:ureg}, {src:ureg}", _u_movsx),
    _Form("lddw {dst:ureg}, map_by_{how:mapmode}({imm:imm})", _u_map_by),
    _Form("ld_func {dst:ureg}, {target:target}", _u_ld_func),
    _Form("{m:m_ld_imm64} {dst:ureg}, {imm:imm}", _u_ld_imm64),
    _Form("{m:m_ld_imm64} {dst:ureg}, {lo:imm}, {hi:imm}", _u_ld_imm64_halves),
    _Form("{m:m_ld_abs} {imm:imm}", _u_ld_abs),
    _Form("{m:m_ld_ind} {src:ureg}, {imm:imm}", _u_ld_ind),
    _Form("call {imm:imm}", _u_call),
    _Form("call {dst:ureg}", _u_callx),  # bpf_conformance's callx
    _Form("call helper {dst:ureg}", _u_callx),
    _Form("callx {dst:ureg}", _u_callx),
    _Form("call {mode:callmode} {imm:imm}", _u_call),
    _Form("call {mode:local} {target:target}", _u_call),
    _Form("call {name:name}", _u_call_name),
    _Form("call_local {target:target}", _u_call_local),
    _Form("call_kfunc {imm:imm}", _u_call_kfunc),
    _Form("call_kfunc {imm:imm}, {off:imm}", _u_call_kfunc),
    _Form("exit", _exit),
    _Form("lock {op:lockname} " + _UMEM + ", {src:ureg}", _u_lock),
    _Form("{m:m_lock} " + _UMEM + ", {src:ureg}", _u_lock_named),
]


def _build_ubpf_index(forms):
    """Mnemonic -> the forms that can start with it."""
    index = {}
    for form in forms:
        head = form.template.split(" ", 1)[0]
        names = _FIELDS[head[1:-1].split(":")[1]].words if head.startswith("{") else (head,)
        for name in names:
            index.setdefault(name, []).append(form)
    return index


_UBPF_INDEX = _build_ubpf_index(_UBPF_FORMS)
_UBPF_KEY = re.compile(r"\s*([A-Za-z_]\w*)")


def _ubpf_forms(line, pos, end):
    m = _UBPF_KEY.match(line, pos, end)
    if m is None:
        return None, pos
    return _UBPF_INDEX.get(m.group(1)), m.start(1)


# Fast dispatch of bare statements: LLVM by their first two characters, ubpf by mnemonic.
_LLVM_BY_PREFIX = {"if": _LLVM_FORMS["if"], "go": _LLVM_FORMS["goto"] + _LLVM_FORMS["gotol"],
                   "ma": _LLVM_FORMS["may_goto"], "ca": _LLVM_FORMS["call"] + _LLVM_FORMS["callx"], "ex": _LLVM_FORMS["exit"],
                   "lo": _LLVM_FORMS["lock"], "*(": _LLVM_FORMS["*"], "ld": _LLVM_FORMS["ld_pseudo"]}
_LLVM_BY_PREFIX.update({f"{r}{n}": _LLVM_FORMS["reg"] for r in "rw" for n in range(10)})
_FAST_KEYS = {
    "llvm": lambda stripped: _LLVM_BY_PREFIX.get(stripped[:2]),
    "ubpf": lambda stripped: _UBPF_INDEX.get(stripped.partition(" ")[0]),
}


# --- lines ----------------------------------------------------------------------

# Listing prefixes: "12:" then "(b7)" (verifier log, bpftool) or raw bytes (llvm-objdump).
_PREFIX = re.compile(r"\s*\d+:\s*(?:\((?P<code>[0-9a-fA-F]{2})\)\s*|(?:[0-9a-fA-F]{2}\s){8}(?:(?:[0-9a-fA-F]{2}\s){8})?)?")
_LISTING = re.compile(r"^\s*\d+:\s*\([0-9a-fA-F]{2}\)\s", re.M)
_COMMENT = re.compile(r";|//|(?<!\S)#")
_ANNOTATION = re.compile(r"\s*<[^<>]*>\s*$")  # llvm-objdump's "<.text+0x38>" after jump targets
_LABEL = re.compile(r"\s*(" + _NAME + r")\s*:(?!\S)")
_UBPF_HINT = re.compile(r"%r\d|^\s*(?:" + _NAME + r":\s*)?(?!call\b|exit\b|goto\b|gotol\b|may_goto\b|lock\s*\*|if\b)"
                        r"[a-z_]\w*\s+(?:%?r\d|\[|[+-]?\d|\w+\s*\[)", re.M)
_LLVM_HINT = re.compile(r"^\s*(?:\d+:\s*(?:\([0-9a-fA-F]{2}\)\s*)?)?(?:" + _NAME + r":\s*)?(?:[rw]\d+\s*\S*=|if\s|goto\s|\*\(|lock\s+\*)",
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
        if want is not None and where > best:
            best, expected = where, want
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
            insn = form.build(ctx)
            break
    else:
        _error_at(lineno, line, pos, end, forms, first)
    if code is not None and int(code, 16) != insn.op.code:
        # The kernel prints ld_imm64 "(18) r1 = 0x5" exactly like a mov: the opcode decides.
        if int(code, 16) == 0x18 and insn.op.kind == "alu" and insn.op.source == "imm":
            return _insn(_PSEUDO["lddw"], insn.dst, imm=insn.imm & 0xFFFFFFFF, source=insn.source)
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
        forms_for = _llvm_forms
    elif syntax == "ubpf":
        forms_for = _ubpf_forms
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
                            insn = form.build(ctx)
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
