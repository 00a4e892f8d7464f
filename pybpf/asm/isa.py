"""The eBPF instruction set (RFC 9669) as one table.

Every instruction is one Op row: its opcode, Kind, the operand fields it uses and the values
of the fields that tell it apart from rows of the same opcode (sdiv is div with off=1). The
DSL, the assemblers, the disassembler (through pybpf.asm.spelling) and validation all read
it: adding an instruction is adding a row.

An instruction is 8 bytes, little endian: opcode, dst (low nibble) and src (high nibble),
off (s16), imm (s32); ld_imm64 takes two, the second carrying imm's high half.
"""
import enum
from dataclasses import dataclass, field
from itertools import count

from ..errors import AssemblerError

# Instruction classes (opcode & 0x07).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = range(8)
CLASS_NAMES = ("ld", "ldx", "st", "stx", "alu", "jmp", "jmp32", "alu64")

# Source bit of ALU/JMP opcodes (opcode & 0x08).
K, X = 0x00, 0x08

# Memory access sizes (opcode & 0x18) and modes (opcode & 0xe0).
SIZE_W, SIZE_H, SIZE_B, SIZE_DW = 0x00, 0x08, 0x10, 0x18
SIZE_BITS = {SIZE_B: 8, SIZE_H: 16, SIZE_W: 32, SIZE_DW: 64}
SIZE_SUFFIX = {SIZE_B: "b", SIZE_H: "h", SIZE_W: "w", SIZE_DW: "dw"}
MODE_IMM, MODE_ABS, MODE_IND, MODE_MEM, MODE_MEMSX, MODE_ATOMIC = 0x00, 0x20, 0x40, 0x60, 0x80, 0xC0

# Registers: r0 return value, r1-r5 arguments, r6-r9 callee saved, r10 frame pointer.
MAX_REG = 10
FRAME_POINTER = 10

# Pseudo sources of ld_imm64 (src_reg): what the 64-bit immediate means.
PSEUDO_MAP_FD = 1
PSEUDO_MAP_VALUE = 2
PSEUDO_BTF_ID = 3
PSEUDO_FUNC = 4
PSEUDO_MAP_IDX = 5
PSEUDO_MAP_IDX_VALUE = 6

# Call sources (src_reg of BPF_CALL).
CALL_HELPER = 0
CALL_PSEUDO = 1  # bpf-to-bpf call, imm is the pc-relative target
CALL_KFUNC = 2  # imm is a BTF id, off indexes the fd array of module BTFs

FIELDS = ("dst", "src", "off", "imm")


class Kind(str, enum.Enum):
    """What an instruction is, as far as its operands go: each syntax spells a kind one way
    (pybpf.asm.syntax), whatever its row's operation, width and opcode."""

    ALU = "alu"
    NEG = "neg"
    END = "end"  # le/be: to a byte order from the host's
    BSWAP = "bswap"  # unconditional byte swap (cpu v4)
    MOVSX = "movsx"
    JMP = "jmp"  # conditional
    JA = "ja"
    GOTOL = "gotol"  # ja with a 32-bit offset in imm (cpu v4)
    MAY_GOTO = "may_goto"
    CALL = "call"  # helper, bpf-to-bpf or kfunc: the row's operation says which
    CALLX = "callx"
    EXIT = "exit"
    LD_IMM64 = "ld_imm64"  # two slots; the row's operation names the pseudo source
    LD_ABS = "ld_abs"
    LD_IND = "ld_ind"
    LDX = "ldx"
    LDXS = "ldxs"  # sign-extending load (cpu v4)
    ST = "st"
    STX = "stx"
    ATOMIC = "atomic"

    # A Kind is its name too: equal to, hashed as and printed as "alu", ...
    __hash__ = str.__hash__

    def __str__(self):
        return self.value


JUMPS = frozenset((Kind.JMP, Kind.JA, Kind.GOTOL, Kind.MAY_GOTO))  # a pc-relative branch target


@dataclass(frozen=True)
class AluOp:
    name: str  # ubpf mnemonic stem: add, sub, ...
    code: int  # high nibble of the opcode
    c_op: str  # kernel/LLVM syntax operator: "+=", "s/=", ...
    off: int = 0  # off value that selects the signed variant (sdiv, smod)


# Binary ALU operations. sdiv/smod share div/mod's opcode and set off=1.
ALU_OPS = (
    AluOp("add", 0x00, "+="),
    AluOp("sub", 0x10, "-="),
    AluOp("mul", 0x20, "*="),
    AluOp("div", 0x30, "/="),
    AluOp("sdiv", 0x30, "s/=", off=1),
    AluOp("or", 0x40, "|="),
    AluOp("and", 0x50, "&="),
    AluOp("lsh", 0x60, "<<="),
    AluOp("rsh", 0x70, ">>="),
    AluOp("mod", 0x90, "%="),
    AluOp("smod", 0x90, "s%=", off=1),
    AluOp("xor", 0xA0, "^="),
    AluOp("mov", 0xB0, "="),
    AluOp("arsh", 0xC0, "s>>="),
)
NEG, END, MOV = 0x80, 0xD0, 0xB0


@dataclass(frozen=True)
class JmpCond:
    name: str  # ubpf mnemonic: jeq, ...
    code: int
    c_op: str  # "==", "s>", "&", ...


JMP_CONDS = (
    JmpCond("jeq", 0x10, "=="),
    JmpCond("jgt", 0x20, ">"),
    JmpCond("jge", 0x30, ">="),
    JmpCond("jset", 0x40, "&"),
    JmpCond("jne", 0x50, "!="),
    JmpCond("jsgt", 0x60, "s>"),
    JmpCond("jsge", 0x70, "s>="),
    JmpCond("jlt", 0xA0, "<"),
    JmpCond("jle", 0xB0, "<="),
    JmpCond("jslt", 0xC0, "s<"),
    JmpCond("jsle", 0xD0, "s<="),
)
JA, CALL, EXIT, JCOND = 0x00, 0x80, 0x90, 0xE0


@dataclass(frozen=True)
class AtomicOp:
    name: str  # add, fetch_add, xchg, cmpxchg, ...
    imm: int  # the atomic operation lives in imm
    c_op: str  # kernel syntax operator for the plain forms


FETCH = 0x01
ATOMIC_OPS = (
    AtomicOp("add", 0x00, "+="),
    AtomicOp("or", 0x40, "|="),
    AtomicOp("and", 0x50, "&="),
    AtomicOp("xor", 0xA0, "^="),
    AtomicOp("fetch_add", 0x00 | FETCH, "+="),
    AtomicOp("fetch_or", 0x40 | FETCH, "|="),
    AtomicOp("fetch_and", 0x50 | FETCH, "&="),
    AtomicOp("fetch_xor", 0xA0 | FETCH, "^="),
    AtomicOp("xchg", 0xE0 | FETCH, ""),
    AtomicOp("cmpxchg", 0xF0 | FETCH, ""),
)

LD_IMM64_PSEUDO = (
    ("lddw", 0),
    ("ld_map_fd", PSEUDO_MAP_FD),
    ("ld_map_value", PSEUDO_MAP_VALUE),
    ("ld_btf_id", PSEUDO_BTF_ID),
    ("ld_func", PSEUDO_FUNC),
    ("ld_map_idx", PSEUDO_MAP_IDX),
    ("ld_map_idx_value", PSEUDO_MAP_IDX_VALUE),
)


_SERIALS = count()


@dataclass(frozen=True)
class Op:
    """One row of the instruction table.

    name:      unique mnemonic (ubpf style: add, add32, jeq32, ldxdw, lock_fetch_add32 ...);
               imm and reg forms share a name and differ in `source`
    code:      opcode byte
    kind:      a Kind
    operation: AluOp/JmpCond/AtomicOp name, the pseudo source name, or None
    bits:      operation width (32 or 64) for ALU/JMP/END/MOVSX/atomic; memory size for memory ops
    source:    "imm", "reg" or None: what the second operand is
    uses:      operand fields this instruction takes from the user
    fixed:     (field, value) pairs that identify this row among rows with the same opcode
    """

    name: str
    code: int
    kind: Kind
    operation: object = None
    bits: int = 64
    source: object = None
    uses: frozenset = frozenset()
    fixed: tuple = ()
    c_op: str = ""
    # (low, high) bounds of dst, src, off, imm, flattened: derived from uses/fixed so that
    # validating an instruction is eight comparisons (see Insn.validate).
    bounds: tuple = field(init=False, repr=False, compare=False)
    slots: int = field(init=False, repr=False, compare=False)  # ld_imm64 takes two 8-byte slots
    # the field a label reference resolves into (pc-relative): "off" for jumps, "imm" for gotol,
    # call_local and ld_func; None for the rest
    target: object = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)
    # a number of this row's own (copies keep it): dict keys that hash at C speed (insn.encode's cache)
    serial: int = field(init=False, repr=False, compare=False)
    # an instruction of the cpu v4 ISA (Linux 6.6): signed division, sign-extending moves and
    # loads, unconditional byte swaps, gotol
    cpu_v4: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        fixed = dict(self.fixed)
        bounds = []
        for name, used in (("dst", (0, MAX_REG)), ("src", (0, MAX_REG)), ("off", (-(1 << 15), (1 << 15) - 1)),
                           ("imm", (-(1 << 63), (1 << 64) - 1) if self.kind is Kind.LD_IMM64 else (-(1 << 31), (1 << 32) - 1))):
            if name in fixed:
                bounds += (fixed[name], fixed[name])
            elif name in self.uses:
                bounds += used
            else:
                bounds += (0, 0)  # reserved: must be zero
        object.__setattr__(self, "bounds", tuple(bounds))
        object.__setattr__(self, "slots", 2 if self.kind is Kind.LD_IMM64 else 1)
        target = "off" if self.kind in JUMPS and self.kind is not Kind.GOTOL else \
            "imm" if self.kind is Kind.GOTOL or self.operation in ("local", "ld_func") else None
        object.__setattr__(self, "target", target)
        # Rows are dict keys on every encode (insn.encode's cache): hash the compared fields once.
        object.__setattr__(self, "_hash", hash((self.name, self.code, self.kind, self.operation, self.bits,
                                                self.source, self.uses, self.fixed, self.c_op)))
        object.__setattr__(self, "serial", next(_SERIALS))
        object.__setattr__(self, "cpu_v4", self.kind in (Kind.BSWAP, Kind.MOVSX, Kind.GOTOL, Kind.LDXS)
                           or self.operation in ("sdiv", "smod"))

    def __hash__(self):
        return self._hash

    @property
    def cls(self):
        return self.code & 0x07

    @property
    def wide(self):
        """ld_imm64 takes two 8-byte slots."""
        return self.slots == 2

    @property
    def size(self):
        """Memory access size in bytes (memory ops only)."""
        return self.bits // 8

    @property
    def jumps(self):
        """Has a pc-relative branch target (in off, or imm for gotol)."""
        return self.kind in JUMPS

    def fixed_value(self, field):
        for name, value in self.fixed:
            if name == field:
                return value
        return 0


def _uses(*fields):
    return frozenset(fields)


def _build_table():
    rows = []
    add = rows.append

    for cls, suffix, bits in ((ALU64, "", 64), (ALU, "32", 32)):
        for op in ALU_OPS:
            fixed = (("off", op.off),) if op.off else ()
            add(Op(op.name + suffix, cls | K | op.code, Kind.ALU, op.name, bits, "imm", _uses("dst", "imm"), fixed, op.c_op))
            add(Op(op.name + suffix, cls | X | op.code, Kind.ALU, op.name, bits, "reg", _uses("dst", "src"), fixed, op.c_op))
        add(Op("neg" + suffix, cls | K | NEG, Kind.NEG, "neg", bits, None, _uses("dst")))
        # Sign-extending moves: mov with off = source width (8/16, and 32 for ALU64).
        for width in (8, 16, 32) if cls == ALU64 else (8, 16):
            add(Op(f"movsx{width}{bits}", cls | X | MOV, Kind.MOVSX, f"s{width}", bits, "reg",
                   _uses("dst", "src"), (("off", width),), "="))

    # Byte swaps: ALU le/be (source bit selects big endian), ALU64 unconditional bswap.
    for width in (16, 32, 64):
        add(Op(f"le{width}", ALU | K | END, Kind.END, "le", width, None, _uses("dst"), (("imm", width),)))
        add(Op(f"be{width}", ALU | X | END, Kind.END, "be", width, None, _uses("dst"), (("imm", width),)))
        add(Op(f"bswap{width}", ALU64 | K | END, Kind.BSWAP, "bswap", width, None, _uses("dst"), (("imm", width),)))

    for cls, suffix, bits in ((JMP, "", 64), (JMP32, "32", 32)):
        for cond in JMP_CONDS:
            add(Op(cond.name + suffix, cls | K | cond.code, Kind.JMP, cond.name, bits, "imm", _uses("dst", "imm", "off"), (), cond.c_op))
            add(Op(cond.name + suffix, cls | X | cond.code, Kind.JMP, cond.name, bits, "reg", _uses("dst", "src", "off"), (), cond.c_op))
    add(Op("ja", JMP | JA, Kind.JA, None, 64, None, _uses("off")))
    add(Op("gotol", JMP32 | JA, Kind.GOTOL, None, 32, None, _uses("imm")))
    add(Op("may_goto", JMP | JCOND, Kind.MAY_GOTO, None, 64, None, _uses("off")))
    add(Op("call", JMP | CALL, Kind.CALL, "helper", 64, None, _uses("imm"), (("src", CALL_HELPER),)))
    add(Op("call_local", JMP | CALL, Kind.CALL, "local", 64, None, _uses("imm"), (("src", CALL_PSEUDO),)))
    add(Op("call_kfunc", JMP | CALL, Kind.CALL, "kfunc", 64, None, _uses("imm", "off"), (("src", CALL_KFUNC),)))
    # A call through a register (LLVM's callx, ubpf's call %rN): not Linux's, which refuses it.
    add(Op("callx", JMP | X | CALL, Kind.CALLX, None, 64, None, _uses("dst")))
    add(Op("exit", JMP | EXIT, Kind.EXIT))

    for name, pseudo in LD_IMM64_PSEUDO:
        add(Op(name, LD | MODE_IMM | SIZE_DW, Kind.LD_IMM64, name, 64, None, _uses("dst", "imm"), (("src", pseudo),)))

    for size in (SIZE_W, SIZE_H, SIZE_B):
        sfx, bits = SIZE_SUFFIX[size], SIZE_BITS[size]
        add(Op("ldabs" + sfx, LD | MODE_ABS | size, Kind.LD_ABS, None, bits, None, _uses("imm")))
        add(Op("ldind" + sfx, LD | MODE_IND | size, Kind.LD_IND, None, bits, None, _uses("src", "imm")))
        add(Op("ldxs" + sfx, LDX | MODE_MEMSX | size, Kind.LDXS, None, bits, None, _uses("dst", "src", "off")))

    for size in (SIZE_W, SIZE_H, SIZE_B, SIZE_DW):
        sfx, bits = SIZE_SUFFIX[size], SIZE_BITS[size]
        add(Op("ldx" + sfx, LDX | MODE_MEM | size, Kind.LDX, None, bits, None, _uses("dst", "src", "off")))
        add(Op("st" + sfx, ST | MODE_MEM | size, Kind.ST, None, bits, "imm", _uses("dst", "off", "imm")))
        add(Op("stx" + sfx, STX | MODE_MEM | size, Kind.STX, None, bits, "reg", _uses("dst", "src", "off")))

    for size, suffix in ((SIZE_DW, ""), (SIZE_W, "32")):
        for op in ATOMIC_OPS:
            add(Op(f"lock_{op.name}{suffix}", STX | MODE_ATOMIC | size, Kind.ATOMIC, op.name, SIZE_BITS[size], "reg",
                   _uses("dst", "src", "off"), (("imm", op.imm),), op.c_op))
    return tuple(rows)


OPS = _build_table()


def _index(rows):
    """Decode index: opcode -> the one field that tells its rows apart, and (opcode, value) -> row."""
    by_code = {}
    for row in rows:
        by_code.setdefault(row.code, []).append(row)
    discriminator, decode = {}, {}
    for code, group in by_code.items():
        fields = {name for row in group for name, _ in row.fixed}
        assert len(fields) <= 1, f"opcode {code:#04x} rows differ in more than one field: {fields}"
        field = fields.pop() if fields else None
        discriminator[code] = field
        for row in group:
            key = (code, row.fixed_value(field) if field else None)
            assert key not in decode, f"two rows for {key}"
            decode[key] = row
    return discriminator, decode


DISCRIMINATOR, DECODE = _index(OPS)

# (name, source) -> row, for assemblers. source is "imm"/"reg" or None.
BY_NAME = {}
for _row in OPS:
    BY_NAME.setdefault((_row.name, _row.source), _row)
    BY_NAME.setdefault((_row.name, None), _row)
del _row


def lookup(name, source=None):
    """The row for a mnemonic; `source` ("imm"/"reg") picks between the two forms of ALU and jump ops."""
    row = BY_NAME.get((name, source)) or BY_NAME.get((name, None))
    if row is None:
        raise AssemblerError(f"unknown instruction {name!r}")
    return row


# (kind, operation, bits, source) -> row: how the assemblers find the row for what they mean.
ROWS = {(row.kind, row.operation, row.bits, row.source): row for row in OPS}
assert len(ROWS) == len(OPS), "two rows mean the same"


def row(kind, operation=None, bits=64, source=None):
    """The row of a kind of instruction: row(Kind.ALU, "add", 32, "imm") is add32 with an immediate."""
    return ROWS[(kind, operation, bits, source)]


UNKNOWN = object()  # DISCRIMINATOR's answer for an opcode no row has


def decode_op(code, dst, src, off, imm):
    """The row for raw fields, or None when no instruction has them."""
    field = DISCRIMINATOR.get(code, UNKNOWN)
    if field is UNKNOWN:
        return None
    if field is None:
        return DECODE[(code, None)]
    value = {"src": src, "off": off, "imm": imm}[field]
    return DECODE.get((code, value))
