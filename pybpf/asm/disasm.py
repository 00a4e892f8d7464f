"""Bytecode back to text, in the kernel's, LLVM's or ubpf's syntax (pybpf.asm.spelling).

kernel  what the verifier log and `bpftool prog dump xlated` print, line for line:
        "   0: (b7) r0 = 0"; map loads as map[fd:N] in raw code, map[id:N] in code read back
        from the kernel (Symbols(xlated=True)), calls named as bpftool names them.
llvm    what `llvm-objdump -d --mcpu=v4 --no-show-raw-insn` prints ("       0:\tr1 += 0x5"),
        without its "<sym+0x..>" comments, and a readable extension where it loses bits.
ubpf    ubpf's mnemonics ("ldxw %r1, [%r2+4]"); rows ubpf lacks print as their isa name.

Bytes that are no instruction print as "invalid: REASON [xx xx ...]" and disassembly goes on.
The text of an instruction is a function of its 8 or 16 bytes and the options, so it is
cached per raw slot: a real program costs a dict lookup per instruction after its first
distinct slots.
"""
import struct

from ..errors import BpfError
from . import helpers, isa
from .insn import Insn
from .insn import decode as _decode
from .isa import Kind
from .spelling import PRINTERS, SYNTAXES, U32, U64, s32

_SLOT = struct.Struct("<BBhi")
_LD_IMM64 = isa.LD | isa.MODE_IMM | isa.SIZE_DW


class Symbols:
    """How names are shown: map references and, for xlated dumps, calls.

    xlated:      the code comes from BPF_OBJ_GET_INFO_BY_FD xlated_prog_insns: map
                 loads hold map ids, helper/kfunc calls hold offsets from
                 __bpf_call_base, bpf-to-bpf calls hold the target in `off`
    kallsyms:    sorted [(address, name)] from /proc/kallsyms, with call_base
                 (__bpf_call_base), to name xlated calls as bpftool does
    jited_ksyms: per-subprogram addresses of a jited program (prog info)
    """

    def __init__(self, xlated=False, kallsyms=None, call_base=0, jited_ksyms=()):
        self.xlated = xlated
        self.by_address = dict(kallsyms or ())
        self.call_base = call_base
        self.jited_ksyms = tuple(jited_ksyms)

    @classmethod
    def load_kallsyms(cls, jited_ksyms=()):
        """Symbols for an xlated dump, read from /proc/kallsyms like bpftool does."""
        table, base = {}, 0
        try:
            with open("/proc/kallsyms") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 3:
                        continue
                    address = int(parts[0], 16)
                    if parts[2] == "__bpf_call_base":
                        base = address
                    if address:
                        table.setdefault(address, parts[2])
        except OSError:
            pass
        if not base:  # kptr_restrict hides addresses: bpftool names nothing then
            table = {}
        return cls(xlated=True, kallsyms=table, call_base=base, jited_ksyms=jited_ksyms)

    def call_name(self, src, imm, off):
        """bpftool's print_call for an xlated call instruction."""
        address = (self.call_base + imm) & U64
        if src == isa.CALL_PSEUDO and 0 <= imm < len(self.jited_ksyms):
            address = self.jited_ksyms[imm]
        sym = self.by_address.get(address)
        if src == isa.CALL_PSEUDO:
            if not self.jited_ksyms:
                return f"{off:+d}"
            return f"{off:+d}#{sym}" if sym else f"{off:+d}#{address:#x}"
        return sym if sym else f"{address:#x}"


RAW = Symbols()


def _check_syntax(syntax):
    if syntax not in PRINTERS:
        raise BpfError(f"unknown syntax {syntax!r} (choose from {', '.join(SYNTAXES)})")


def _invalid_text(raw, reason):
    return f"invalid: {reason} [{raw.hex(' ')}]"


def _body(insn, syntax, syms):
    """Text of one Insn/InvalidInsn in `syntax`, with the kernel's "(op) " prefix."""
    if insn.op is None:
        raw = insn.raw
        text = _invalid_text(raw, insn.reason)
        return f"({raw[0]:02x}) {text}" if syntax == "kernel" and raw else text
    text = PRINTERS[syntax][insn.op](insn.dst, insn.src, insn.off, insn.imm, syms)
    return f"({insn.op.code:02x}) {text}" if syntax == "kernel" else text


def _prefix(pc, syntax):
    return f"{pc:8d}:\t" if syntax == "llvm" else f"{pc: 4d}: "


def format_insn(insn, syntax="kernel", pc=None, *, symbols=RAW):
    """One instruction as text: "(b7) r0 = 0", or "   3: (b7) r0 = 0" with a pc.

    `insn` is an Insn (linked: labels already resolved), an InvalidInsn, or the
    8/16 raw bytes of one instruction. `symbols` (a Symbols) says how map and
    call operands are named; the default reads raw bytecode (map fds).
    """
    _check_syntax(syntax)
    if isinstance(insn, (bytes, bytearray, memoryview)):
        decoded = _decode(insn)
        if not decoded:
            raise BpfError("format_insn: no instruction in 0 bytes")
        insn = decoded[0]
    text = _body(insn, syntax, symbols)
    return text if pc is None else _prefix(pc, syntax) + text


AUX_REG = isa.MAX_REG + 1  # r11: the kernel's scratch register (BPF_REG_AX) in xlated code


def _decode_one(raw, symbols):
    """The first instruction of raw (Insn or InvalidInsn).

    Xlated code may use r11, which the verifier itself inserts (division
    guards, constant blinding): accept it there, and nowhere else.
    """
    insn = _decode(raw)[0]
    if insn.op is None and symbols.xlated and len(insn.raw) == 8:
        code, regs, off, imm = _SLOT.unpack(raw[:8])
        op = isa.decode_op(code, regs & 0x0F, regs >> 4, off, imm)
        if op is not None and not op.wide and max(regs & 0x0F, regs >> 4) <= AUX_REG:
            insn = Insn(op, regs & 0x0F, regs >> 4, off, imm)
    return insn


# opcode -> its row, or (index of the discriminating field in (code, regs, off, imm) with regs
# split as src, {value: row}) when rows share the opcode: decode_op's answer without the calls.
_FIELD_INDEX = {"src": 1, "off": 2, "imm": 3}
_ROWS = {code: isa.DECODE[(code, None)] if field is None else
        (_FIELD_INDEX[field], {value: row for (c, value), row in isa.DECODE.items() if c == code})
         for code, field in isa.DISCRIMINATOR.items()}
_KERNEL_PREFIX = [f"({code:02x}) " for code in range(256)]


def _decoded_text(data, pos, printers, kernel, symbols):
    """(raw bytes, text, cacheable) of the instruction at data[pos:], through insn.decode:
    ld_imm64, invalid slots (with their exact reason) and xlated code's r11."""
    insn = _decode_one(data[pos:pos + 16], symbols)
    if insn.op is None:
        return insn.raw, _body(insn, "kernel" if kernel else "", symbols), False
    text = printers[insn.op](insn.dst, insn.src, insn.off, insn.imm, symbols)
    return data[pos:pos + 8 * insn.op.slots], _KERNEL_PREFIX[insn.op.code] + text if kernel else text, True


def _slots(data, syntax, symbols, pcs=True):
    """(pcs, texts) of the instructions of `data`: each one's first slot and its text body
    (pcs is None when not asked for).

    The cache maps raw slot bytes to text: identical slots format once. A valid
    one-slot instruction missing from it is read straight from its fields (the
    checks of insn.decode, without building an Insn): a program with no repeats
    costs that per instruction.
    """
    printers = PRINTERS[syntax]
    kernel = syntax == "kernel"
    unpack, rows = _SLOT.unpack_from, _ROWS
    cache, shows = {}, {}
    texts, at = [], [] if pcs else None
    add, add_pc = texts.append, at.append if pcs else None
    end = len(data)
    pos = 0
    while pos < end:
        key = data[pos:pos + 8]
        text = cache.get(key)
        if text is None and len(key) == 8:
            code, regs, off, imm = unpack(key)
            row = rows.get(code)
            src = regs >> 4
            if row.__class__ is tuple:
                index, by_value = row
                row = by_value.get(src if index == 1 else off if index == 2 else imm)
            if row is not None and row.slots == 1:
                dst = regs & 0x0F
                dst_lo, dst_hi, src_lo, src_hi, off_lo, off_hi, imm_lo, imm_hi = row.bounds
                if (dst_lo <= dst <= dst_hi and src_lo <= src <= src_hi and off_lo <= off <= off_hi
                        and imm_lo <= imm <= imm_hi):
                    show = shows.get(row.serial)  # by serial: an int hashes at C speed, a row does not
                    if show is None:
                        show = shows[row.serial] = printers[row]
                    text = show(dst, src, off, imm, symbols)
                    if kernel:
                        text = _KERNEL_PREFIX[code] + text
                    cache[key] = text
            elif code == _LD_IMM64:  # cached under both its slots
                text = cache.get(data[pos:pos + 16])
                if text is not None:
                    key = data[pos:pos + 16]
        if text is None:
            key, text, cacheable = _decoded_text(data, pos, printers, kernel, symbols)
            if cacheable:
                cache[key] = text
        add(text)
        if pcs:
            add_pc(pos >> 3)
        pos += len(key)
    return at, texts


def disassemble(code, syntax="kernel", *, symbols=RAW, pcs=None):
    """Text of bytecode (bytes, or a list of Insn), one instruction a line.

    kernel: "   0: (b7) r0 = 0" as bpftool prints; llvm: "       0:\\tr0 = 0x0"
    as llvm-objdump --no-show-raw-insn prints; ubpf: "mov %r0, 0x0" (no pc column,
    as ubpf's disassembler; pcs=True adds one, pcs=False drops it everywhere).
    Garbage prints as "invalid: ..." lines, never raises.
    """
    _check_syntax(syntax)
    if pcs is None:
        pcs = syntax != "ubpf"
    if not isinstance(code, (bytes, bytearray, memoryview)):
        code = b"".join(insn.encode() for insn in code)
    at, lines = _slots(bytes(code), syntax, symbols, pcs)
    if pcs:
        if syntax == "llvm":
            lines = [f"{pc:8d}:\t{text}" for pc, text in zip(at, lines)]
        else:
            lines = [f"{pc: 4d}: {text}" for pc, text in zip(at, lines)]
    return "\n".join(lines) + ("\n" if lines else "")


def disassemble_json(code, syntax="kernel", *, symbols=RAW, map_names=None):
    """One dict per instruction, for tools:

    {"pc", "opcode", "raw" (hex), "name", "dst", "src", "off", "imm", "text",
     and where they apply: "helper" (name), "target" (absolute pc of a jump,
     bpf-to-bpf call or ld_func), "map" ({"fd"|"id"|"idx": N, "offset": M,
     "name": ...})}. An invalid slot has "invalid" (the reason) instead of the
    fields. `map_names` maps map id -> name (filled in for loaded programs).
    """
    _check_syntax(syntax)
    if not isinstance(code, (bytes, bytearray, memoryview)):
        code = b"".join(insn.encode() for insn in code)
    data = bytes(code)
    at, texts = _slots(data, syntax, symbols)
    out = []
    for i, (pc, text) in enumerate(zip(at, texts)):
        raw = data[pc * 8:at[i + 1] * 8 if i + 1 < len(at) else len(data)]
        entry = {"pc": pc, "opcode": raw[0], "raw": raw.hex(), "text": text}
        insn = _decode_one(raw, symbols)
        if insn.op is None:
            entry["invalid"] = insn.reason
            out.append(entry)
            continue
        op = insn.op
        entry.update(name=op.name, dst=insn.dst, src=insn.src, off=insn.off, imm=insn.imm)
        _annotate(entry, pc, insn, symbols, map_names)
        out.append(entry)
    return out


def _annotate(entry, pc, insn, symbols, map_names):
    op = insn.op
    kind = op.kind
    if kind in (Kind.JMP, Kind.JA, Kind.MAY_GOTO):
        entry["target"] = pc + 1 + insn.off
    elif kind is Kind.GOTOL:
        entry["target"] = pc + 1 + insn.imm
    elif kind is Kind.CALL:
        if insn.src == isa.CALL_PSEUDO:
            entry["target"] = pc + 1 + (insn.off if symbols.xlated else insn.imm)
        elif insn.src == isa.CALL_HELPER:
            name = helpers.name_of(insn.imm)
            if name:
                entry["helper"] = name
            elif symbols.xlated:
                entry["helper"] = symbols.call_name(insn.src, insn.imm, insn.off)
    elif kind is Kind.LD_IMM64:
        lo, hi = insn.imm & U32, (insn.imm >> 32) & U32
        src = insn.src
        if src in (isa.PSEUDO_MAP_FD, isa.PSEUDO_MAP_VALUE, isa.PSEUDO_MAP_IDX, isa.PSEUDO_MAP_IDX_VALUE):
            key = "idx" if src in (isa.PSEUDO_MAP_IDX, isa.PSEUDO_MAP_IDX_VALUE) else (
                "id" if symbols.xlated else "fd")
            ref = {key: lo}
            if src in (isa.PSEUDO_MAP_VALUE, isa.PSEUDO_MAP_IDX_VALUE):
                ref["offset"] = hi
            if key == "id" and map_names and lo in map_names:
                ref["name"] = map_names[lo]
            entry["map"] = ref
        elif src == isa.PSEUDO_FUNC:
            entry["target"] = pc + 1 + s32(lo)
