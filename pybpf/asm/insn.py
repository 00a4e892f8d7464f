"""Instructions as values: an Insn is a row of the isa table, its operand fields, and what
matters before linking: a label naming it, a ref (a label or map its operand means) and the
source ("file.py:line") that emitted it. make() builds every one; encode() validates each
field against the row and says where an instruction does not fit.
"""
import struct

from . import isa
from ..errors import AssemblerError

_SLOT = struct.Struct("<BBhi")
_WIDE = struct.Struct("<BBhiBBhi")
_RAW = struct.Struct("<BBhI")

S16 = (-(1 << 15), (1 << 15) - 1)


class Insn:
    """Insn("add", 1, imm=5) or Insn(row, dst, src, off, imm): the row by name or isa.Op, the
    fields as ints. Built by make(), as every instruction is."""

    __slots__ = ("op", "dst", "src", "off", "imm", "label", "ref", "source")

    def __new__(cls, op, dst=0, src=0, off=0, imm=0, *, label=None, ref=None, source=None):
        if isinstance(op, str):
            op = isa.lookup(op)
        return make(op, int(dst), int(src), int(off), int(imm), label, ref, source)

    def __reduce__(self):
        return make, (self.op, self.dst, self.src, self.off, self.imm, self.label, self.ref, self.source)

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
        dst_lo, dst_hi, src_lo, src_hi, off_lo, off_hi, imm_lo, imm_hi = self.op.bounds
        imm = self.imm
        if not (dst_lo <= self.dst <= dst_hi and src_lo <= self.src <= src_hi
                and off_lo <= self.off <= off_hi and imm_lo <= imm <= imm_hi):
            self._explain()
        if imm_hi > 0xFFFFFFFF:  # ld_imm64: the whole 64 bits, unsigned
            return imm & 0xFFFFFFFFFFFFFFFF
        return imm - (1 << 32) if imm > 0x7FFFFFFF else imm

    def _explain(self):
        """Raise the AssemblerError that says which field is wrong, and why."""
        op = self.op
        fixed = dict(op.fixed)
        for field in ("dst", "src"):
            value = getattr(self, field)
            if field in fixed or field not in op.uses:
                if value != fixed.get(field, 0):
                    self._fail(f"reserved field {field} must be {fixed.get(field, 0)}, is {value}")
            elif not 0 <= value <= isa.MAX_REG:
                self._fail(f"{field} register r{value} out of range r0..r{isa.MAX_REG}")
        if "off" in fixed or "off" in op.uses:
            if not S16[0] <= self.off <= S16[1]:
                self._fail(f"offset {self.off} out of range {S16[0]}..{S16[1]}")
            if "off" in fixed and self.off != fixed["off"]:
                self._fail(f"field off must be {fixed['off']} for {op.name}, is {self.off}")
        elif self.off:
            self._fail(f"reserved field off must be 0, is {self.off}")
        if op.wide:
            self._fail(f"immediate {self.imm:#x} does not fit 64 bits")
        if "imm" in fixed and self.imm != fixed["imm"]:
            self._fail(f"field imm must be {fixed['imm']} for {op.name}, is {self.imm}")
        if "imm" in op.uses:
            self._fail(f"immediate {self.imm} does not fit 32 bits")
        self._fail(f"reserved field imm must be 0, is {self.imm}")

    def encode(self):
        imm = self.validate()
        op = self.op
        if op.slots == 2:
            lo, hi = imm & 0xFFFFFFFF, imm >> 32
            return _WIDE.pack(op.code, (self.src << 4) | self.dst, self.off, lo - (1 << 32) if lo >> 31 else lo,
                              0, 0, 0, hi - (1 << 32) if hi >> 31 else hi)
        return _SLOT.pack(op.code, (self.src << 4) | self.dst, self.off, imm)

    # -- pseudo-instruction views ----------------------------------------
    @property
    def imm_lo(self):
        return self.imm & 0xFFFFFFFF

    @property
    def imm_hi(self):
        return (self.imm >> 32) & 0xFFFFFFFF


_new = object.__new__


def make(op, dst=0, src=0, off=0, imm=0, label=None, ref=None, source=None):
    """The instruction of row `op` with these fields: the one place instructions are built.

    The fields that tell the row apart from others of its opcode (sdiv's off=1, a fetch-add's
    imm, a call's src) come from the row, whatever is given for them. No checks: the
    assemblers call this for every instruction, and encoding validates."""
    insn = _new(Insn)
    insn.op = op
    insn.dst = dst
    insn.src = src
    insn.off = off
    insn.imm = imm
    if op.fixed:
        for field, value in op.fixed:
            setattr(insn, field, value)
    insn.label = label
    insn.ref = ref
    insn.source = source
    return insn


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


_ENCODED = {}  # (op.serial, dst, src, off, imm) -> bytes: programs repeat instructions a lot
_ENCODED_MAX = 1 << 16


def encode(insns):
    """Bytes of a sequence of instructions (InvalidInsn raw bytes pass through)."""
    cache = _ENCODED
    out = []
    append = out.append
    for insn in insns:
        op = insn.op
        if op is None:
            append(insn.raw)
            continue
        key = (op.serial, insn.dst, insn.src, insn.off, insn.imm)
        code = cache.get(key)
        if code is None:
            code = insn.encode()  # validates; only valid encodings are remembered
            if len(cache) >= _ENCODED_MAX:
                cache.clear()
            cache[key] = code
        append(code)
    return b"".join(out)


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
            insn = make(op, dst, src, off, imm)
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
