"""Instructions as values.

An `Insn` is one row of the isa table plus its operand fields, and three
optional annotations that matter before linking:
    label:  a symbol naming this instruction (a jump or call target)
    ref:    what an operand refers to before it is resolved: a label for
            jumps and bpf-to-bpf calls, a map object for map loads
    source: "file.py:line" of the DSL call that emitted it

`encode` validates every field against the table (registers 0..10, offsets
s16, immediates s32, reserved fields zero) and raises AssemblerError with the
instruction's location when something does not fit.
"""
import struct

from . import isa
from .errors import AssemblerError

_SLOT = struct.Struct("<BBhi")
_WIDE = struct.Struct("<BBhiBBhi")
_RAW = struct.Struct("<BBhI")

S16 = (-(1 << 15), (1 << 15) - 1)
S32 = (-(1 << 31), (1 << 31) - 1)


def _s32(value):
    """Accept -2**31 .. 2**32-1 for a 32-bit immediate, return it as signed."""
    if not -(1 << 31) <= value < (1 << 32):
        return None
    return value - (1 << 32) if value >= (1 << 31) else value


class Insn:
    __slots__ = ("op", "dst", "src", "off", "imm", "label", "ref", "source")

    def __init__(self, op, dst=0, src=0, off=0, imm=0, *, label=None, ref=None, source=None):
        if isinstance(op, str):
            op = isa.lookup(op)
        self.op = op
        self.dst = int(dst)
        self.src = int(src)
        self.off = int(off)
        self.imm = int(imm)
        # Fields that identify the row (sdiv's off=1, fetch-add's imm, call's src) are part of the op.
        for field, value in op.fixed:
            setattr(self, field, value)
        self.label = label
        self.ref = ref
        self.source = source

    # -- value semantics -------------------------------------------------
    def fields(self):
        return (self.op, self.dst, self.src, self.off, self.imm)

    def __eq__(self, other):
        return isinstance(other, Insn) and self.fields() == other.fields()

    def __hash__(self):
        return hash(self.fields())

    def __repr__(self):
        parts = [self.op.name] + [f"{f}={getattr(self, f)}" for f in isa.FIELDS if getattr(self, f)]
        if self.label:
            parts.append(f"label={self.label!r}")
        if self.ref is not None:
            parts.append(f"ref={self.ref!r}")
        return f"Insn({', '.join(parts)})"

    @property
    def slots(self):
        return self.op.slots

    # -- encoding ---------------------------------------------------------
    def _fail(self, message):
        raise AssemblerError(f"{self.op.name}: {message}", self.source)

    def validate(self):
        """Check every field against the table; return the imm to encode."""
        op = self.op
        uses = op.uses
        fixed = dict(op.fixed)
        for field in ("dst", "src"):
            value = getattr(self, field)
            if field in uses:
                if not 0 <= value <= isa.MAX_REG:
                    self._fail(f"{field} register r{value} out of range r0..r{isa.MAX_REG}")
            elif value != fixed.get(field, 0):
                self._fail(f"reserved field {field} must be {fixed.get(field, 0)}, is {value}")
        if "off" in uses or "off" in fixed:
            if not S16[0] <= self.off <= S16[1]:
                self._fail(f"offset {self.off} out of range {S16[0]}..{S16[1]}")
        elif self.off:
            self._fail(f"reserved field off must be 0, is {self.off}")
        if op.wide:
            if not -(1 << 63) <= self.imm < (1 << 64):
                self._fail(f"immediate {self.imm:#x} does not fit 64 bits")
            return self.imm & 0xFFFFFFFFFFFFFFFF
        if "imm" in uses or "imm" in fixed:
            imm = _s32(self.imm)
            if imm is None:
                self._fail(f"immediate {self.imm} does not fit 32 bits")
            return imm
        if self.imm:
            self._fail(f"reserved field imm must be 0, is {self.imm}")
        return 0

    def encode(self):
        imm = self.validate()
        regs = (self.src << 4) | self.dst
        if self.op.wide:
            lo = imm & 0xFFFFFFFF
            hi = imm >> 32
            return _WIDE.pack(self.op.code, regs, self.off, lo - (1 << 32) if lo >> 31 else lo,
                              0, 0, 0, hi - (1 << 32) if hi >> 31 else hi)
        return _SLOT.pack(self.op.code, regs, self.off, imm)

    # -- pseudo-instruction views ----------------------------------------
    @property
    def imm_lo(self):
        return self.imm & 0xFFFFFFFF

    @property
    def imm_hi(self):
        return (self.imm >> 32) & 0xFFFFFFFF


class InvalidInsn:
    """Bytes that are no instruction. Disassembly prints them and goes on."""

    __slots__ = ("raw", "reason", "label", "ref", "source")
    slots = 1
    op = None

    def __init__(self, raw, reason):
        self.raw = bytes(raw)
        self.reason = reason
        self.label = self.ref = self.source = None

    def encode(self):
        return self.raw

    def __eq__(self, other):
        return isinstance(other, InvalidInsn) and self.raw == other.raw

    def __hash__(self):
        return hash(self.raw)

    def __repr__(self):
        return f"InvalidInsn({self.raw.hex()}, {self.reason!r})"


def encode(insns):
    """Bytes of a sequence of instructions."""
    return b"".join(insn.encode() for insn in insns)


def _why_invalid(code, dst, src, off, imm):
    field = isa.DISCRIMINATOR.get(code, isa.UNKNOWN)
    if field is isa.UNKNOWN:
        return f"unknown opcode {code:#04x}"
    value = {"src": src, "off": off, "imm": imm}[field]
    return f"opcode {code:#04x} has no instruction with {field}={value}"


def decode(code_bytes, strict=False):
    """Decode bytecode into a list of Insn (and InvalidInsn for undecodable slots).

    Never raises on garbage unless `strict`: each bad slot becomes an InvalidInsn
    and decoding goes on with the next slot. A trailing partial slot is one
    InvalidInsn too.
    """
    data = memoryview(bytes(code_bytes))
    out = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            bad = InvalidInsn(data[pos:], f"truncated instruction: {end - pos} bytes")
            if strict:
                raise AssemblerError(bad.reason, f"insn {len(out)}")
            out.append(bad)
            break
        code, regs, off, imm_u32 = _RAW.unpack_from(data, pos)
        dst, src = regs & 0x0F, regs >> 4
        imm = imm_u32 - (1 << 32) if imm_u32 >> 31 else imm_u32
        op = isa.decode_op(code, dst, src, off, imm)
        reason = None if op else _why_invalid(code, dst, src, off, imm)
        if op is not None and op.wide:
            if end - pos < 16:
                op, reason = None, "ld_imm64 without its second slot"
            else:
                code2, regs2, off2, hi = _RAW.unpack_from(data, pos + 8)
                if code2 or regs2 or off2:
                    op, reason = None, "ld_imm64 second slot has non-zero reserved fields"
                else:
                    imm = (hi << 32) | imm_u32
        if op is not None:
            insn = Insn.__new__(Insn)
            insn.op, insn.dst, insn.src, insn.off, insn.imm = op, dst, src, off, imm
            insn.label = insn.ref = insn.source = None
            try:
                insn.validate()
            except AssemblerError as err:
                op, reason = None, str(err)
        if op is None:
            if strict:
                raise AssemblerError(reason, f"insn {len(out)}")
            out.append(InvalidInsn(data[pos:pos + 8], reason))
            pos += 8
            continue
        out.append(insn)
        pos += 8 * op.slots
    return out
