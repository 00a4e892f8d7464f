"""How each syntax spells each row of the instruction table: one table per syntax, which the
disassembler (pybpf.asm.disasm) prints with and the assembler (pybpf.asm.text) reads with.

A table is a list of lines (rows, template, flags...). `rows` picks rows of the isa table by
kind, operation and source; the template spells them, e.g.

    "if {dst:reg} {op:cond} {imm:shex} goto {off:lrel}"

Each {name:type} is a field. An operand field prints and reads an instruction field (dst,
src, off, imm, or lo/hi, imm's halves) in its type's notation (shex: LLVM's signed hex). A
word field prints a word of the row (cond: its C operator, name: its mnemonic); the words
read back, with the register widths, find the row, so a new row of a kind that is spelled
already needs no new line. A space prints as one space and reads as any whitespace;
{name:type?} is left out when its value is 0.

The printer uses a row's first line whose condition (a Python expression over dst, src,
off, imm and the Symbols, syms) holds; PRINT lines are not read back. The reader tries every
other line, READ ones being spellings it accepts and never writes. Every row has a line in
every syntax (tests/unit/test_spelling.py).
"""
import functools
import re

from . import helpers, isa
from .insn import _SLOT, _WIDE, make  # the 8-byte forms, packed as Insn.encode packs them
from .isa import Kind

U32, U64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF
NUM = r"(?:0[xX][0-9a-fA-F]+|\d+)"
NAME = r"[A-Za-z_.$][\w.$]*"
TARGET = r"(?:pc)?[+-]\s*" + NUM + "|" + NAME
REGS = {f"{prefix}{n}": (n, bits) for n in range(isa.MAX_REG + 1) for prefix, bits in (("r", 64), ("w", 32))}
UREGS = {f"{prefix}{n}": (n, 64) for n in range(isa.MAX_REG + 1) for prefix in ("%r", "r")}


# -- numbers as they print, and read back ----------------------------------------------------------

def s32(value):
    """Immediates print signed (LLVM) or as u32 (kernel jumps): read back, they are signed."""
    return value - (1 << 32) if (1 << 31) <= value < (1 << 32) else value


def s64(value):
    value &= U64
    return value - (1 << 64) if value >> 63 else value


def shex(value):
    """LLVM's signed hex: 0x5, -0x4."""
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


def uoff(value):
    """ubpf's offset: +4, -8."""
    return f"+{value}" if value >= 0 else str(value)


def number(text):
    """The value of "12", "-0x1f", "+ 4" or "+ -3" (the kernel prints "+ %d")."""
    try:
        return int(text, 0)
    except ValueError:  # "+ 4", "010", "+ -3"
        pass
    digits = text.replace(" ", "").replace("\t", "")
    sign = 1
    while digits[:1] in "+-" and digits:
        if digits[0] == "-":
            sign = -sign
        digits = digits[1:]
    try:
        return sign * (int(digits, 16) if digits[1:2] in "xX" else int(digits))
    except ValueError:
        raise BadNumber(text) from None


class BadNumber(ValueError):
    """What number() raises; the reader says where."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text


def kernel_callee(op, src, off, imm, syms):
    """What the kernel prints after "call " (disasm.c's __func_get_name, then bpftool's names)."""
    if src == isa.CALL_HELPER:
        name = helpers.name_of(imm)
        if name:
            return f"{name}#{imm}"
    if syms.xlated:
        name = syms.call_name(src, imm, off)
        return f"pc{name}" if src == isa.CALL_PSEUDO else f"{name}#{imm}"
    if src == isa.CALL_PSEUDO:
        return f"pc{imm:+d}"
    if src == isa.CALL_KFUNC:
        return f"kernel-function#{imm}"
    return f"unknown#{imm}"


# -- field types -------------------------------------------------------------------------------------

class Operand:
    """An instruction field in one notation: regex and desc to read it, `show` (an f-string
    fragment, each %s the field's expression) to print it, `read` for its value. target: it
    reads a jump target (a number or a label); signed: an immediate read back as s32."""

    def __init__(self, regex, desc, show, word=True, target=False, signed=False, read=None):
        self.regex, self.desc, self.show, self.word = regex, desc, show, word
        self.target, self.signed, self.read = target, signed, read or number


class Register:
    """A register. width: "row" (prints and reads as the row's width: r or w), 64 (prints r,
    must read r), None (prints r, reads either), "mem" (prints w below a 64-bit memory size,
    reads either) or "memx" (the same, and must read back so). Register fields named "_" are
    no instruction field: zero=True must read r0 (cmpxchg's comparand), else anything reads."""

    word = True

    def __init__(self, width, prefix="r", regex=r"[rw]\d+", zero=False):
        self.width, self.prefix, self.zero = width, prefix, zero
        self.regex, self.desc = regex, "a register"
        self.names = UREGS if prefix == "%r" else REGS

    def letter(self, row):
        if self.width == "row":
            return "w" if row.bits == 32 else "r"
        if self.width in ("mem", "memx"):
            return "w" if row.bits < 64 else "r"
        return self.prefix


class Word:
    """A word of the row (mnemonic, C operator, size, ...), printed from the row and read back
    to find it. words(row): what reads as the row, the first being what prints; key(row): what
    the word tells about the row (default: the word itself); numeric: read as a number."""

    def __init__(self, words, desc, key=None, word=True, numeric=False):
        self.words, self.desc, self.word, self.numeric = words, desc, word, numeric
        self.key = key or (lambda row: words(row)[0])


class Callee:
    """A call's operand that names its own row: a helper, a kfunc or a subprogram. kernel: the
    kernel's (numbers, pc+N and name#id too), else ubpf's (a name)."""

    word = True

    def __init__(self, regex, desc, show, kernel):
        self.regex, self.desc, self.show, self.kernel = regex, desc, show, kernel


def _one(fn):
    return lambda row: (fn(row),)


_IMM = r"[+-]?\s*" + NUM
_OFF = r"[+-]\s*[+-]?" + NUM
FIELDS = {
    # registers
    "reg": Register("row"),
    "r64": Register(64),
    "rx": Register(None),
    "rw": Register("mem"),
    "rwx": Register("memx"),
    "ureg": Register(None, "%r", r"%?r\d+"),
    "zero": Register(None, zero=True),
    "zerow": Register("mem", zero=True),
    "r0": Register(None),
    # immediates
    "dec": Operand(_IMM, "an immediate", "{%s}", signed=True),
    "hex": Operand(_IMM, "an immediate", "{hex(%s)}", signed=True),
    "hex32": Operand(_IMM, "an immediate", "{hex(%s & 0xFFFFFFFF)}", signed=True),
    "hex64": Operand(_IMM, "an immediate", "{hex(%s & 0xFFFFFFFFFFFFFFFF)}"),
    "shex": Operand(_IMM, "an immediate", "{hex(%s)}", signed=True),  # hex() spells as shex() does
    "shex64": Operand(_IMM, "an immediate", "{hex(s64(%s))}"),
    # memory offsets, and ld_ind's immediate
    "koff": Operand(_OFF, "an offset like +8 or -8", "{'' if %s < 0 else '+'}{%s}", word=False),
    "loff": Operand(_OFF, "an offset like +8 or -8", "{'- ' + hex(-%s) if %s < 0 else '+ ' + hex(%s)}",
                    word=False),
    "uoff": Operand(_OFF, "an offset like +8", "{uoff(%s)}", word=False),
    "kplus": Operand(_OFF, "an offset like +8 or -8", "+ {%s}", word=False, signed=True),
    "lplus": Operand(_OFF, "an offset like +8 or -8", "+ {hex(%s)}", word=False, signed=True),
    # pc-relative targets: a number, or a label that linking resolves
    "kpc": Operand(TARGET, "a jump target (+N, pc+N or a label)", "pc{'' if %s < 0 else '+'}{%s}", target=True),
    "lrel": Operand(TARGET, "a jump target (+N, pc+N or a label)", "{hex(%s) if %s < 0 else '+' + hex(%s)}",
                    target=True),
    "urel": Operand(TARGET, "a jump target (+N, pc+N or a label)", "{uoff(%s)}", target=True),
    "ksub": Operand(TARGET, "a jump target (+N, pc+N or a label)", "{s32(%s):+d}", target=True),
    "usub": Operand(TARGET, "a jump target (+N, pc+N or a label)", "{uoff(s32(%s))}", target=True),
    # bpftool's map operand: fd in raw code, id in code read back from the kernel
    "mapid": Operand(r"(?:fd|id)\s*:\s*" + NUM, "fd:N or id:N", "{'id' if syms.xlated else 'fd'}:{%s}",
                     read=lambda text: number(text.partition(":")[2].strip())),
    # a call's operand: the kernel's (a helper or kfunc by name, a number, pc+N or a label) and
    # ubpf's by name (a helper, else a label)
    "kcallee": Callee(r"pc[+-]" + NUM + r"|[+-]?" + NUM + "|" + NAME + r"(?:-[\w.$]+)*(?:#-?\d+)?",
                      "a helper id or name, pc+N or a label", "{kernel_callee(op, src, off, imm, syms)}", True),
    "ucallee": Callee(NAME, "a name", None, False),
    # words of the row
    "name": Word(_one(lambda row: row.name), "a mnemonic"),
    "aluop": Word(_one(lambda row: row.c_op), "an ALU operator like +=", word=False),
    "cond": Word(_one(lambda row: row.c_op), "a comparison like == or s>", word=False),
    "lockop": Word(_one(lambda row: row.c_op), "an atomic operator like +=", word=False),
    "size": Word(_one(lambda row: f"{'s' if row.kind is Kind.LDXS else 'u'}{row.bits}"), "a size like u32"),
    "asize": Word(_one(lambda row: f"u{row.bits}"), "u32 or u64"),
    "sx": Word(_one(lambda row: row.operation), "s8, s16 or s32"),
    "kafn": Word(lambda row: (f"atomic{'64' if row.bits == 64 else ''}_{row.operation}",
                              f"atomic{'' if row.bits == 64 else '64'}_{row.operation}"),
                 "atomic_fetch_add, atomic_xchg, ...", key=lambda row: row.operation),
    "lafn": Word(lambda row: (f"atomic_{row.operation}", f"atomic64_{row.operation}"),
                 "atomic_fetch_add, atomic_xchg, ...", key=lambda row: row.operation),
    "kcmpxchg": Word(lambda row: (f"atomic{'64' if row.bits == 64 else ''}_cmpxchg",
                                  f"atomic{'' if row.bits == 64 else '64'}_cmpxchg"),
                     "atomic_cmpxchg", key=lambda row: "cmpxchg"),
    "lsuffix": Word(_one(lambda row: f"{row.operation}{'_64' if row.bits == 64 else '32_32'}"),
                    "xchg_64, cmpxchg32_32, ..."),
    "pseudo": Word(_one(lambda row: f"{row.fixed_value('src'):#x}"), "a pseudo source like 0x1",
                   key=lambda row: row.fixed_value("src"), numeric=True),
    "uswap": Word(_one(lambda row: f"swap{row.bits}"), "swap16, swap32 or swap64"),
    "lockname": Word(lambda row: ((row.name[5:].replace("_", " "),) if row.operation not in ("xchg", "cmpxchg")
                                  else (row.name[5:], "fetch " + row.name[5:])),
                     "an atomic operation like add or fetch add32"),
}


# -- which rows, printed when ------------------------------------------------------------------------

def on(*kinds, operation=None, source=None):
    """Rows of these kinds (and, when given, of these operations or this source)."""
    operations = (operation,) if isinstance(operation, str) else operation
    return lambda row: (row.kind in kinds and (operations is None or row.operation in operations)
                        and (source is None or row.source == source))


READ = "read"  # read back, never printed
PRINT = "print"  # printed when its condition holds, not read back
# Conditions: Python expressions over the fields (dst, src, off, imm), the row (op) and the Symbols (syms).
OFF = "off"
NO_HI = "not imm >> 32 & 0xFFFFFFFF"
XLATED = "syms.xlated"

_PLAIN_ATOMICS = ("add", "or", "and", "xor")
_FETCH_ATOMICS = ("fetch_add", "fetch_or", "fetch_and", "fetch_xor")
_MEM = "({dst:r64} {off:%s})"  # a memory operand, its offset in the syntax's notation

# kernel/bpf/disasm.c, the verifier log and `bpftool prog dump xlated`
KERNEL = (
    (on(Kind.ALU, source="imm"), "{dst:reg} {op:aluop} {imm:dec}"),
    (on(Kind.ALU, source="reg"), "{dst:reg} {op:aluop} {src:reg}"),
    (on(Kind.LDX, Kind.LDXS), "{dst:rx} = *({size:size} *)({src:r64} {off:koff})"),
    (on(Kind.STX), "*({size:size} *)" + _MEM % "koff" + " = {src:rx}"),
    (on(Kind.ST), "*({size:size} *)" + _MEM % "koff" + " = {imm:dec}"),
    (on(Kind.JMP, source="reg"), "if {dst:reg} {op:cond} {src:reg} goto {off:kpc}"),
    (on(Kind.JMP, source="imm"), "if {dst:reg} {op:cond} {imm:hex32} goto {off:kpc}"),
    (on(Kind.JA), "goto {off:kpc}"),
    (on(Kind.EXIT), "exit"),
    (on(Kind.CALL), "call {imm:kcallee} off {off:dec}", "op.operation == 'kfunc' and off and not syms.xlated"),
    (on(Kind.CALL), "call {imm:kcallee}"),
    (on(Kind.CALLX), "callx {dst:r64}"),  # the kernel has no spelling for it: LLVM's
    (on(Kind.LD_IMM64, operation="lddw"), "{dst:r64} = {imm:hex64}"),
    (on(Kind.LD_IMM64, operation="ld_map_fd"), "{dst:r64} = map[{lo:mapid}]"),
    (on(Kind.LD_IMM64, operation="ld_map_fd"), "{dst:r64} = map[{lo:mapid}][0]", READ),
    (on(Kind.LD_IMM64, operation="ld_map_value"), "{dst:r64} = map[{lo:mapid}][0]+{hi:dec}"),
    (on(Kind.LD_IMM64, operation="ld_map_value"), "{dst:r64} = map[{lo:mapid}]+{hi:dec}", READ),
    (on(Kind.LD_IMM64, operation="ld_func"), "{dst:r64} = subprog[{lo:ksub}]"),
    (on(Kind.LD_IMM64), "{dst:r64} = {imm:hex64}", PRINT, XLATED),  # the others, read back from the kernel
    (on(Kind.LD_IMM64, operation="ld_map_idx"), "{dst:r64} = map[idx:{lo:dec}]"),
    (on(Kind.LD_IMM64, operation="ld_map_idx"), "{dst:r64} = map[idx:{lo:dec}][0]", READ),
    (on(Kind.LD_IMM64, operation="ld_map_idx_value"), "{dst:r64} = map[idx:{lo:dec}][0]+{hi:dec}"),
    (on(Kind.LD_IMM64, operation="ld_map_idx_value"), "{dst:r64} = map[idx:{lo:dec}]+{hi:dec}", READ),
    (on(Kind.LD_IMM64, operation="ld_btf_id"), "{dst:r64} = btf_id[{lo:dec}]", NO_HI),
    (on(Kind.LD_IMM64, operation="ld_btf_id"), "{dst:r64} = btf_id[{imm:hex64}]"),  # hi: a module BTF's fd
    (on(Kind.NEG), "{dst:reg} = -{dst:reg}"),
    (on(Kind.MOVSX), "{dst:reg} = ({op:sx}){src:reg}"),
    (on(Kind.END, Kind.BSWAP), "{dst:rx} = {op:name} {dst:rx}"),
    (on(Kind.ATOMIC, operation=_PLAIN_ATOMICS), "lock *({size:asize} *)" + _MEM % "koff" + " {op:lockop} {src:rx}"),
    (on(Kind.ATOMIC, operation=_FETCH_ATOMICS + ("xchg",)),
     "{src:rx} = {fn:kafn}(({size:asize} *)" + _MEM % "koff" + ", {src:rx})"),
    (on(Kind.ATOMIC, operation="cmpxchg"),
     "{_:zero} = {fn:kcmpxchg}(({size:asize} *)" + _MEM % "koff" + ", {_:zero}, {src:rx})"),
    (on(Kind.GOTOL), "gotol {imm:kpc}"),
    (on(Kind.MAY_GOTO), "may_goto {off:kpc}"),
    (on(Kind.LD_ABS), "{_:r0} = *({size:size} *)skb[{imm:dec}]"),
    (on(Kind.LD_IND), "{_:r0} = *({size:size} *)skb[{src:r64} {imm:kplus}]"),
)

# llvm-objdump -d --mcpu=v4 (what llvm-mc reads); where objdump loses bits, a readable extension
LLVM = (
    (on(Kind.ALU, source="imm"), "{dst:reg} {op:aluop} {imm:shex}"),
    (on(Kind.ALU, source="reg"), "{dst:reg} {op:aluop} {src:reg}"),
    (on(Kind.LDX), "{dst:rw} = *({size:size} *)({src:r64} {off:loff})"),
    (on(Kind.LDXS), "{dst:rx} = *({size:size} *)({src:r64} {off:loff})"),
    (on(Kind.STX), "*({size:size} *)" + _MEM % "loff" + " = {src:rw}"),
    (on(Kind.ST), "*({size:size} *)" + _MEM % "loff" + " = {imm:shex}"),
    (on(Kind.JMP, source="reg"), "if {dst:reg} {op:cond} {src:reg} goto {off:lrel}"),
    (on(Kind.JMP, source="imm"), "if {dst:reg} {op:cond} {imm:shex} goto {off:lrel}"),
    (on(Kind.JA), "goto {off:lrel}"),
    (on(Kind.EXIT), "exit"),
    (on(Kind.CALL, operation="helper"), "call {imm:shex}"),
    (on(Kind.CALL, operation="local"), "call pc{imm:lrel}"),
    (on(Kind.CALL, operation="kfunc"), "call kfunc {imm:shex}, {off:shex}", OFF),
    (on(Kind.CALL, operation="kfunc"), "call kfunc {imm:shex}"),
    (on(Kind.CALLX), "callx {dst:r64}"),
    (on(Kind.LD_IMM64, operation="lddw"), "{dst:r64} = {imm:shex64} ll"),
    (on(Kind.LD_IMM64), "ld_pseudo\t{dst:r64}, {src:pseudo}, {imm:hex64}"),
    (on(Kind.NEG), "{dst:reg} = -{dst:reg}"),
    (on(Kind.MOVSX), "{dst:reg} = ({op:sx}){src:reg}"),
    (on(Kind.END, Kind.BSWAP), "{dst:rx} = {op:name} {dst:rx}"),
    (on(Kind.ATOMIC, operation=_PLAIN_ATOMICS), "lock *({size:asize} *)" + _MEM % "loff" + " {op:lockop} {src:rw}"),
    (on(Kind.ATOMIC, operation=_FETCH_ATOMICS), "{src:rw} = {fn:lafn}(({size:asize} *)" + _MEM % "loff" + ", {src:rw})"),
    (on(Kind.ATOMIC, operation="xchg"), "{src:rw} = {fn:lsuffix}({dst:r64} {off:loff}, {src:rwx})"),
    (on(Kind.ATOMIC, operation="cmpxchg"), "{_:zerow} = {fn:lsuffix}({dst:r64} {off:loff}, {_:zerow}, {src:rwx})"),
    (on(Kind.GOTOL), "gotol {imm:lrel}"),
    (on(Kind.MAY_GOTO), "may_goto {off:lrel}"),
    (on(Kind.LD_ABS), "{_:r0} = *({size:size} *)skb[{imm:shex}]"),
    (on(Kind.LD_IND), "{_:r0} = *({size:size} *)skb[{src:r64} {imm:lplus?}]"),
)

# ubpf's (dis)assembler and bpf_conformance; rows ubpf lacks print as their isa name
UBPF = (
    (on(Kind.ALU, source="imm"), "{m:name} {dst:ureg}, {imm:hex32}"),
    (on(Kind.ALU, source="reg"), "{m:name} {dst:ureg}, {src:ureg}"),
    (on(Kind.LDX, Kind.LDXS), "{m:name} {dst:ureg}, [{src:ureg}{off:uoff?}]"),
    (on(Kind.STX, Kind.ATOMIC), "{m:name} [{dst:ureg}{off:uoff?}], {src:ureg}"),
    (on(Kind.ATOMIC), "lock {m:lockname} [{dst:ureg}{off:uoff?}], {src:ureg}", READ),
    (on(Kind.ST), "{m:name} [{dst:ureg}{off:uoff?}], {imm:hex32}"),
    (on(Kind.JMP, source="imm"), "{m:name} {dst:ureg}, {imm:hex32}, {off:urel}"),
    (on(Kind.JMP, source="reg"), "{m:name} {dst:ureg}, {src:ureg}, {off:urel}"),
    (on(Kind.JA, Kind.MAY_GOTO), "{m:name} {off:urel}"),
    (on(Kind.GOTOL), "gotol {imm:urel}"),
    (on(Kind.GOTOL), "ja32 {imm:urel}", READ),
    (on(Kind.EXIT), "exit"),
    (on(Kind.CALL, operation="helper"), "call {imm:hex32}"),
    (on(Kind.CALL, operation="helper"), "call helper {imm:dec}", READ),
    (on(Kind.CALL, operation=("helper", "local")), "call {m:ucallee}", READ),
    (on(Kind.CALL, operation="local"), "call local {imm:urel}"),
    (on(Kind.CALL, operation="local"), "call_local {imm:urel}", READ),
    (on(Kind.CALL, operation="kfunc"), "call_kfunc {imm:hex32}, {off:dec}", OFF),
    (on(Kind.CALL, operation="kfunc"), "call_kfunc {imm:hex32}"),
    (on(Kind.CALL, operation="kfunc"), "call runtime {imm:dec}", READ),
    (on(Kind.CALLX), "call {dst:ureg}"),  # bpf_conformance's callx
    (on(Kind.CALLX), "call helper {dst:ureg}", READ),
    (on(Kind.CALLX), "callx {dst:ureg}", READ),
    (on(Kind.LD_IMM64, operation="lddw"), "lddw {dst:ureg}, {imm:hex64}"),
    (on(Kind.LD_IMM64, operation="ld_map_fd"), "lddw {dst:ureg}, map_by_fd({imm:dec})", READ),
    (on(Kind.LD_IMM64, operation="ld_map_idx"), "lddw {dst:ureg}, map_by_idx({imm:dec})", READ),
    (on(Kind.LD_IMM64, operation="ld_func"), "ld_func {dst:ureg}, {lo:usub}", NO_HI),
    # a pseudo load's 32-bit value, and the value offset of the *_value loads (printed even when 0)
    (on(Kind.LD_IMM64), "{m:name} {dst:ureg}, {lo:hex}", NO_HI + " and src not in (2, 6)"),
    (on(Kind.LD_IMM64), "{m:name} {dst:ureg}, {lo:hex}, {hi:hex}"),
    (on(Kind.NEG, Kind.END, Kind.BSWAP), "{m:name} {dst:ureg}"),
    (on(Kind.BSWAP), "{m:uswap} {dst:ureg}", READ),  # bpf_conformance's spelling
    (on(Kind.MOVSX), "{m:name} {dst:ureg}, {src:ureg}"),
    (on(Kind.LD_ABS), "{m:name} {imm:hex32}"),
    (on(Kind.LD_IND), "{m:name} {src:ureg}, {imm:hex32}"),
)

TABLES = {"kernel": KERNEL, "llvm": LLVM, "ubpf": UBPF}
SYNTAXES = tuple(TABLES)


# -- templates ---------------------------------------------------------------------------------------

_PART = re.compile(r"\{(\w+):(\w+)(\?)?\}|([ \t])|([^{ \t]+)")


def parts(template):
    """The template's items: (literal, None, None, False) for text and separators, (None, name,
    field type, optional) for fields."""
    out = []
    for m in _PART.finditer(template):
        name, ftype, optional, space, literal = m.groups()
        out.append((None, name, FIELDS[ftype], bool(optional)) if name else (space or literal, None, None, False))
    return out


def _lines(syntax, row):
    """The lines of `syntax` that print `row`: (template, condition or None), until an unconditional one."""
    out = []
    for rows, template, *flags in TABLES[syntax]:
        if READ not in flags and rows(row):
            when = next((flag for flag in flags if flag not in (READ, PRINT)), None)
            out.append((template, when))
            if when is None:
                return out
    raise AssertionError(f"{syntax} has no unconditional line for {row.name}")


# -- printing ----------------------------------------------------------------------------------------

_EXPR = {"dst": "dst", "src": "src", "off": "off", "imm": "imm",
         "lo": "(imm & 0xFFFFFFFF)", "hi": "(imm >> 32 & 0xFFFFFFFF)"}


def _expression(template, row):
    """An f-string for the text of `row` in `template`: its words and register letters are
    constants, its operands expressions."""
    text = []
    items = parts(template)
    for i, (literal, name, ftype, optional) in enumerate(items):
        if literal is not None:
            if not (literal.isspace() and i + 1 < len(items) and items[i + 1][3]):
                text.append(literal.replace("{", "{{").replace("}", "}}").replace("\t", "\\t"))
        elif isinstance(ftype, Word):
            text.append(ftype.words(row)[0])
        elif isinstance(ftype, Register):
            text.append(ftype.letter(row) + ("0" if name == "_" else "{%s}" % _EXPR[name]))
        elif optional:  # printed with the separator before it, or not at all
            sep = items[i - 1][0] if i and items[i - 1][0] and items[i - 1][0].isspace() else ""
            text.append("{f'%s%s' if %s else ''}" % (sep, ftype.show.replace("%s", _EXPR[name]), _EXPR[name]))
        else:
            text.append(ftype.show.replace("%s", _EXPR[name]))
    return 'f"%s"' % "".join(text)


PRINT_NAMESPACE = {"shex": shex, "uoff": uoff, "s32": s32, "s64": s64,
                   "kernel_callee": kernel_callee}


def printer_source(syntax, row):
    """The lines of Python that print `row` in `syntax`: returning f-strings over dst, src, off,
    imm, syms and op (the row), with PRINT_NAMESPACE. Printers compiles them; the
    disassembler inlines them in its per-opcode functions."""
    lines = []
    for template, when in _lines(syntax, row):
        text = _expression(template, row)
        lines += [f"if {when}:", f"    return {text}"] if when else [f"return {text}"]
    return lines


class Printers(dict):
    """row -> fn(dst, src, off, imm, syms) giving its text in one syntax, compiled from the row's
    lines on first use (a disassembler calls them for every instruction)."""

    def __init__(self, syntax):
        super().__init__()
        self.syntax = syntax

    def __missing__(self, row):
        body = "".join(f"    {line}\n" for line in printer_source(self.syntax, row))
        namespace = dict(PRINT_NAMESPACE, op=row)
        exec(compile(f"def show(dst, src, off, imm, syms):\n{body}", f"<{self.syntax} {row.name}>", "exec"),
             namespace)
        fn = self[row] = namespace["show"]
        return fn


PRINTERS = {syntax: Printers(syntax) for syntax in TABLES}


# -- reading -----------------------------------------------------------------------------------------

def _alternation(words):
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(set(words), key=len, reverse=True))


class _Spaced(dict):
    """Words read with any whitespace between their parts ("lock fetch  add")."""

    def __missing__(self, text):
        return self[" ".join(text.split())]


class Form:
    """One line of a table compiled for reading: a regex with a group a field, its steps (to
    say where a line stops making sense), and `build`, which reads the groups of a match into
    an Insn: a function written from the template (see _reader), as a printer is."""

    def __init__(self, template, rows):
        self.template = template
        self.rows = [row for row in isa.OPS if rows(row)]
        self.kinds = sorted({row.kind for row in self.rows}, key=list(Kind).index)
        items, self.fields, seen = [], [], {}
        spaced = False
        for literal, name, ftype, optional in parts(template):
            if literal is not None:
                if literal.isspace():
                    spaced = True
                    continue
                items.append((re.escape(literal), repr(literal), False, literal[0].isalnum(),
                              literal[-1].isalnum(), spaced))
            else:
                if isinstance(ftype, Word):
                    regex = NUM if ftype.numeric else _alternation(w for row in self.rows for w in ftype.words(row))
                    regex = f"(?:{regex})" + (r"(?!\w)" if ftype.word and not ftype.numeric else "")
                else:
                    regex = ftype.regex
                again = seen.get(name) if name != "_" else None
                seen.setdefault(name, len(self.fields))
                self.fields.append((name, ftype, again, optional))
                items.append((f"({regex})", ftype.desc, optional, ftype.word, ftype.word, spaced))
            spaced = False
        pieces, self.steps, prev_word = [], [], False
        for body, desc, optional, word_start, word_end, spaced in items:
            sep = r"\s+" if spaced and prev_word and word_start else r"\s*"
            piece = f"(?:{sep}{body})?" if optional else sep + body
            pieces.append(("", piece, optional and body[0] == "(") if optional else (sep, body, body[0] == "("))
            self.steps.append((piece, desc))
            prev_word = word_end
        # The pattern as (separator, body, whether the body is a field's group) pieces: a
        # field's body is its one group. pybpf.asm.text joins the pieces of many forms.
        self.pieces = tuple(pieces)
        self.pattern = "".join(step for step, _ in self.steps) + r"\s*$"
        # The row, from what its words say (and the registers' width, where that is the row's).
        self.words = [i for i, (_, ftype, _, _) in enumerate(self.fields) if isinstance(ftype, Word)]
        self.width = any(isinstance(f, Register) and f.width == "row" for _, f, _, _ in self.fields)
        self.callee = any(isinstance(f, Callee) for _, f, _, _ in self.fields)
        self.index = {}
        if not self.callee:
            for row in self.rows:
                key = tuple(self.fields[i][1].key(row) for i in self.words) + ((row.bits,) if self.width else ())
                assert self.index.setdefault(key, row) is row, f"{template!r}: {key} says two rows"
        self.source, self.namespace = _reader(self)

    def build(self, c):
        """The Insn the match c.m says, or an AssemblerError at the column at fault: the reader
        written for this form, compiled on first use."""
        exec(compile(self.source, f"<read {self.template}>", "exec"), self.namespace)
        self.build = self.namespace["build"]
        return self.build(c)

    def encoder(self, groups):
        """encode(m) for this form's fields at these groups of a match (see _reader)."""
        source, namespace = _reader(self, groups)
        namespace["BadNumber"] = BadNumber
        exec(compile(source, f"<encode {self.template}>", "exec"), namespace)
        return namespace["encode"]

    @functools.cached_property
    def regex(self):
        """Compiled on first use: a program meets few of the forms."""
        return re.compile(self.pattern)

    def progress(self, line, pos, end):
        """How far this form gets into line[pos:end]: (position, what was expected there)."""
        for step, desc in self.steps:
            m = re.compile(step).match(line, pos, end)  # errors only: compiled (and cached by re) then
            if m is None:
                return pos, desc
            pos = m.end()
        if line[pos:end].strip():
            return pos, "end of statement"
        return end, None

    def miss(self, c, bits):
        """No row has what the words say."""
        words = " ".join(c.m.group(i + 1) for i in self.words)
        c.fail(self.words[0] + 1 if self.words else None,
               f"no {'/'.join(map(str, self.kinds))} with {words}" + (f" on {bits}-bit registers" if bits else ""))

    def bad_number(self, c, text):
        group = next(i + 1 for i in range(len(self.fields)) if text in (c.m.group(i + 1) or ""))
        c.fail(group, f"bad number {text!r}")


def _wrong_width(c, group, bits, n, text):
    c.fail(group, f"expected a {bits}-bit register ({'w' if bits == 32 else 'r'}{n}), got {text!r}")


DESPACE = ".replace(' ', '')"  # "+ 4" -> "+4"


def _reader(form, groups=None):
    """(source, namespace) of build(c) for a form: straight-line code for its fields, as a
    printer is for a row.

    With `groups` (the group of each field in a regex joining many forms), the function is
    encode(m) instead: the instruction's bytes, validated as Insn.encode does, or None for
    anything else (a label, a bad field, a row that does not fit), which the caller then
    reads with build(c) to say what is wrong, or to keep the label."""
    fast = groups is not None
    code, namespace = [], {"make": make, "number": number, "s32": s32, "U32": U32, "form": form,
                           "INDEX": form.index, "callee": _callee, "wrong_width": _wrong_width,
                           "SLOT": _SLOT.pack, "WIDE": _WIDE.pack}
    emit = code.append

    def fail(pad, statement):
        emit(f"{pad}    {'return None' if fast else statement}")

    bits_known = signed = memx = False
    values = set()
    spelled = {}  # field -> (its text, {word: what it says}): the words a fast entry is keyed by
    for i, (name, ftype, again, optional) in enumerate(form.fields):
        at = i + 1
        # the field's text: read where it is used, when it is used once
        once = fast and not optional and (isinstance(ftype, (Register, Word)) or isinstance(
            ftype, Operand) and not ftype.target and ftype.read is number)
        t = f"m[{groups[i]}]" if once else "t"
        if not once:
            emit(f"t = m[{groups[i]}]" if fast else f"t = g[{i}]")
        pad = "    " if optional else ""
        if optional:
            emit("if t is not None:")
        var = name  # the local variable of an operand field is its name
        if isinstance(ftype, Register) and fast:
            namespace[f"N{i}"] = ftype.names
            n = var if name != "_" and again is None else "n"
            if ftype.width == "row" and not bits_known:
                emit(f"{pad}{n}, bits = N{i}[{t}]")
                bits_known = True
            else:
                emit(f"{pad}{n}, b = N{i}[{t}]")
                if ftype.width in ("row", 64):
                    emit(f"{pad}if b != {'bits' if ftype.width == 'row' else 64}:")
                    emit(f"{pad}    return None")
                elif ftype.width == "memx" and not memx:
                    emit(f"{pad}memx = b")
                    memx = True
            if n == var:
                values.add(var)
            elif name != "_" or ftype.zero:
                emit(f"{pad}if n{'' if name == '_' else ' != ' + var}:")
                emit(f"{pad}    return None")
        elif isinstance(ftype, Register):
            namespace[f"N{i}"] = ftype.names
            emit(f"{pad}r = N{i}.get(t)")
            emit(f"{pad}if r is None:")
            fail(pad, f"c.fail({at}, f'expected a register, got {{t!r}}')")
            if ftype.width == "row":
                if bits_known:
                    emit(f"{pad}if r[1] != bits:")
                    fail(pad, f"wrong_width(c, {at}, bits, r[0], t)")
                else:
                    emit(f"{pad}bits = r[1]")
                    bits_known = True
            elif ftype.width == 64:
                emit(f"{pad}if r[1] != 64:")
                fail(pad, f"wrong_width(c, {at}, 64, r[0], t)")
            elif ftype.width == "memx" and not memx:
                emit(f"{pad}memx = ({at}, t, r)")
                memx = True
            if name == "_":
                if ftype.zero:
                    emit(f"{pad}if r[0]:")
                    fail(pad, f"c.fail({at}, f'expected r0 (cmpxchg compares with r0), got {{t!r}}')")
            elif again is None:
                emit(f"{pad}{var} = r[0]")
                values.add(var)
            elif name == "dst":  # the same register again: neg's
                emit(f"{pad}if r[0] != dst:")
                fail(pad, f"c.fail({at}, f'expected the destination register again, got {{t!r}}')")
            else:  # a fetching atomic's result
                emit(f"{pad}if r[0] != {var}:")
                fail(pad, f"c.fail({again + 1}, f'expected {{t!r}} (the source register receives the old "
                          f"value), got {{g[{again}]!r}}')")
        elif isinstance(ftype, Word):
            if ftype.numeric:
                emit(f"{pad}k{i} = {f'int({t}, 0)' if fast else 'number(t)'}")
            else:
                words = {w: ftype.key(row) for row in form.rows for w in ftype.words(row)}
                namespace[f"W{i}"] = _Spaced(words) if any(" " in w for w in words) else words
                if once and not isinstance(namespace[f"W{i}"], _Spaced):
                    spelled[i] = (t, words)  # the entry is found by the word as written
                else:
                    emit(f"{pad}k{i} = W{i}[{t}]")
        elif isinstance(ftype, Callee):
            emit(f"{pad}row, imm, ref = callee(t, {ftype.kernel})")
            if fast:
                emit(f"{pad}if ref is not None:")
                emit(f"{pad}    return None")
            values.update(("imm", "ref"))
        elif ftype.target and fast:  # a number (a label is no number: the slow path keeps it)
            emit(f"{pad}if t[0] == 'p':")
            emit(f"{pad}    if t[1] != 'c' or t[2] not in '+-':")
            emit(f"{pad}        return None")
            emit(f"{pad}    t = t[2:]")
            emit(f"{pad}{var} = int(t, 0)")
            values.add(var)
        elif ftype.target:
            emit(f"{pad}if t[0] in '+-' or t[:2] == 'pc' and t[2:3] in ('+', '-'):")
            emit(f"{pad}    {var} = number(t.removeprefix('pc'))")
            emit(f"{pad}else:")
            emit(f"{pad}    ref = t")
            values.update((var, "ref"))
        else:
            if fast and ftype.read is number:  # number()'s first try; the rest is the slow path's
                emit(f"{pad}{var} = int({t}{'' if ftype.word else DESPACE}, 0)")
            else:
                namespace[f"R{i}"] = ftype.read
                emit(f"{pad}{var} = R{i}(t)")
            values.add(var)
            signed = signed or ftype.signed and name == "imm"
    if "lo" in values:
        values.add("imm")  # made of lo and hi
    varying = _varies(form, values) if fast else None
    if not form.callee:
        key = ", ".join([f"k{i}" for i in form.words] + (["bits"] if form.width else []))
        if fast:  # the row's encoding, found as the row would be, by the words as written
            entries = {k: _entry(varying, row) for k, row in form.index.items()}
            for n, i in enumerate(form.words):
                if i in spelled:
                    text, words = spelled[i]
                    entries = {k[:n] + (w,) + k[n + 1:]: e for k, e in entries.items()
                               for w, said in words.items() if said == k[n]}
            namespace["ENTRY"] = entries
            key = ", ".join([spelled[i][0] if i in spelled else f"k{i}" for i in form.words]
                            + (["bits"] if form.width else []))
            emit(f"{', '.join(_entry(varying, None))}, = ENTRY[({key}{',' if key else ''})]")
        elif len(form.index) == 1 and not key:
            namespace["ROW"] = next(iter(form.index.values()))
            emit("row = ROW")
        else:
            emit(f"row = INDEX.get(({key}{',' if key else ''}))")
            emit("if row is None:")
            fail("", f"form.miss(c, {'bits' if form.width else 'None'})")
    elif fast:
        namespace["ENTRY"] = {row.serial: _entry(varying, row) for row in form.rows}
        emit(f"{', '.join(_entry(varying, None))}, = ENTRY[row.serial]")
    if memx and fast:
        emit("if memx != (64 if row.bits == 64 else 32):")
        emit("    return None")
    elif memx:
        emit("if memx[2][1] != (64 if row.bits == 64 else 32):")
        fail("", "wrong_width(c, memx[0], 64 if row.bits == 64 else 32, memx[2][0], memx[1])")
    if "lo" in values:
        if "hi" in values:
            emit("imm = (lo & U32) | (hi << 32)")
        else:
            emit("imm = lo & U32 if -(1 << 31) <= lo < 0 else lo")
    elif signed and fast and not _plain_imm(form):  # (encoding an s32 is encoding the u32)
        if "slots" in dict(varying):
            emit("if slots == 1:")
            emit("    imm = s32(imm)")
        elif form.rows[0].slots == 1:
            emit("imm = s32(imm)")
    elif signed and not fast:
        emit("if row.slots == 1:")
        emit("    imm = s32(imm)")
    if fast:
        _encoder(form, values, varying, emit)
    defaults = ["dst = src = off = imm = 0", "ref = None"] + [f"{var} = 0" for var in ("lo", "hi") if var in values]
    body = "\n".join("        " + line for line in code)
    if fast:  # what a field left out reads as; the rest is read or constant
        defaults = [f"{name} = 0" for name, _, _, optional in form.fields if optional and name != "_"]
        return ("def encode(m):\n" + "".join(f"    {line}\n" for line in defaults)
                + f"    try:\n{body}\n    except (BadNumber, ValueError, KeyError, IndexError):\n        return None\n"), namespace
    source = ("def build(c):\n    g = c.m.groups()\n    " + "\n    ".join(defaults) + "\n"
              + f"    try:\n{body}\n    except BadNumber as e:\n        form.bad_number(c, e.text)\n"
              + "    return make(row, dst, src, off, imm, None, ref, c.source)\n")
    namespace["BadNumber"] = BadNumber
    return source, namespace


_STANDARD_IMM = (-(1 << 31), (1 << 32) - 1)


def _plain_imm(form):
    """Every row of the form takes a one-slot immediate of the standard bounds, unfixed."""
    return all(row.slots == 1 and row.bounds[6:] == _STANDARD_IMM and "imm" not in dict(row.fixed)
               for row in form.rows)


def _encoding(form, values):
    """What the encoding of a row of this form takes from the row: [(name, fn(row))]."""
    out = [("row", lambda row: row)] if any(f.width == "memx" for _, f, _, _ in form.fields
                                            if isinstance(f, Register)) else []
    out.append(("code", lambda row: row.code))
    for n, name in enumerate(isa.FIELDS):
        if name in values:
            out.append((f"fixed_{name}", lambda row, name=name: dict(row.fixed).get(name)))
            out += [(f"lo_{name}", lambda row, n=n: row.bounds[2 * n]),
                    (f"hi_{name}", lambda row, n=n: row.bounds[2 * n + 1])]
        else:  # what make() leaves in it: the row's fixed value, else 0
            out.append((f"const_{name}", lambda row, name=name: dict(row.fixed).get(name, 0)))
    out.append(("slots", lambda row: row.slots))
    return out


def _varies(form, values):
    """The part of _encoding that differs between the rows of the form (row and code always)."""
    return [(name, fn) for name, fn in _encoding(form, values)
            if name in ("row", "code") or len({fn(row) for row in form.rows}) > 1]


def _entry(varying, row):
    """The row's values of what varies in the form (_varies), their names for row=None."""
    return tuple(name if row is None else fn(row) for name, fn in varying)


def _encoder(form, values, varying, emit):
    """The tail of a form's encode(m): what make() and Insn.encode() do, unrolled for the rows
    of the form, with what all of them share as constants: the fixed fields, each field checked
    against the row's bounds, the bytes."""
    varying = {name for name, _ in varying}
    row0 = form.rows[0]
    same = {name: repr(fn(row0)) for name, fn in _encoding(form, values) if name not in varying}
    fields = {}
    for n, name in enumerate(isa.FIELDS):
        if name not in values:
            fields[name] = f"const_{name}" if f"const_{name}" in varying else same[f"const_{name}"]
            continue
        fields[name] = name
        if f"fixed_{name}" in varying:
            emit(f"if fixed_{name} is not None:")
            emit(f"    {name} = fixed_{name}")
        elif same[f"fixed_{name}"] != "None":  # every row fixes it, to the same value
            fields[name] = same[f"fixed_{name}"]
            continue
        lo, hi = (f"lo_{name}", f"hi_{name}") if f"lo_{name}" in varying else (same[f"lo_{name}"], same[f"hi_{name}"])
        if name in ("dst", "src") and (lo, hi) == ("0", str(isa.MAX_REG)):
            continue  # a register read by name is one of these
        emit(f"if not {lo} <= {name} <= {hi}:")
        emit("    return None")
    regs = fields["dst"] if fields["src"] == "0" else f"({fields['src']} << 4) | {fields['dst']}"
    imm = fields["imm"]
    one = f"return SLOT(code, {regs}, {fields['off']}, {imm} - 0x100000000 if {imm} > 0x7FFFFFFF else {imm})"
    two = (f"imm = {imm} & 0xFFFFFFFFFFFFFFFF", "lo, hi = imm & 0xFFFFFFFF, imm >> 32",
           f"return WIDE(code, {regs}, {fields['off']}, lo - 0x100000000 if lo >> 31 else lo, "
           "0, 0, 0, hi - 0x100000000 if hi >> 31 else hi)")
    if "slots" in varying:
        emit("if slots == 1:")
        emit("    " + one)
        for line in two:
            emit(line)
    elif row0.slots == 1:
        emit(one)
    else:
        for line in two:
            emit(line)


def _callee(text, kernel):
    """(row, imm, label) of a call's operand: the kernel's, or ubpf's (a name)."""
    local = isa.row(Kind.CALL, "local")
    if not kernel:
        name, n = text, None
    else:
        if text.startswith("pc") and text[2:3] in ("+", "-"):
            return local, number(text[2:]), None
        if text[0] in "+-0123456789":
            return isa.row(Kind.CALL, "helper"), s32(number(text)), None
        name, _, n = text.partition("#")
        n = int(n) if n else None
    if name == "unknown" or name in helpers.BY_NAME or name.removeprefix("bpf_") in helpers.BY_NAME:
        return isa.row(Kind.CALL, "helper"), n if n is not None else helpers.lookup(name).id, None
    if n is not None:  # a kfunc, as the verifier log names it
        return isa.row(Kind.CALL, "kfunc"), n, None
    return local, 0, name


def forms(*syntaxes):
    """The Forms of these syntaxes' tables (PRINT lines aside), but those an earlier form reads
    as well: the same regex, read the same way, for fewer rows."""
    out, read = [], {}
    for syntax in syntaxes:
        for rows, template, *flags in TABLES[syntax]:
            if PRINT not in flags:
                form = Form(template, rows)
                earlier = read.setdefault((form.pattern, form.source), [])
                if not any(rows >= set(form.rows) for rows in earlier):
                    earlier.append(set(form.rows))
                    out.append(form)
    return out

