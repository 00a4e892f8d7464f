"""Bytecode back to text, in the kernel's, LLVM's or ubpf's syntax (pybpf.asm.spelling).

kernel  what the verifier log and `bpftool prog dump xlated` print, line for line:
        "   0: (b7) r0 = 0"; map loads as map[fd:N] in raw code, map[id:N] in code read back
        from the kernel (Symbols(xlated=True)), calls named as bpftool names them.
llvm    what `llvm-objdump -d --mcpu=v4 --no-show-raw-insn` prints ("       0:\tr1 += 0x5"),
        without its "<sym+0x..>" comments, and a readable extension where it loses bits.
ubpf    ubpf's mnemonics ("ldxw %r1, [%r2+4]"); rows ubpf lacks print as their isa name.

Bytes that are no instruction print as "invalid: REASON [xx xx ...]" and disassembly goes on.
Each opcode has a function written from the table (its rows' bounds and spellings inlined)
that prints a slot's fields as iter_unpack reads them; slots that repeat print once (a cache),
and the pc column is one %-format over every line.
"""
import re
import struct
from bisect import bisect_left
from itertools import chain

from ..errors import BpfError
from . import helpers, isa
from .insn import Insn, InvalidInsn
from .insn import decode as _decode
from .isa import Kind
from .spelling import PRINT_NAMESPACE, PRINTERS, SYNTAXES, U32, U64, printer_source, s32

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


# -- the fast path: one function per opcode and syntax, written from the table ---------------

# The range each field has as a slot holds it ("<BBhi": imm signed; ld_imm64's 64 bits unsigned).
_NATIVE = {"dst": (0, 15), "src": (0, 15), "off": (-(1 << 15), (1 << 15) - 1), "imm": (-(1 << 31), (1 << 31) - 1)}
_NATIVE_WIDE = dict(_NATIVE, imm=(0, U64))
_OP = re.compile(r"\bop\b")


def _out_of_bounds(row, native, skip):
    """A Python condition true when a slot's fields are no instruction of `row` (insn.validate's
    bounds, less those the slot's field widths and the discriminating field `skip` already keep)."""
    out = []
    for i, name in enumerate(isa.FIELDS):
        lo, hi = row.bounds[2 * i:2 * i + 2]
        low, high = native[name]
        if name == skip or lo <= low and high <= hi:
            continue
        out.append(f"{name} != {lo}" if lo == hi else f"{name} > {hi}" if lo <= low else
                   f"{name} < {lo}" if high <= hi else f"not {lo} <= {name} <= {hi}")
    return " or ".join(out)


def _opcode_source(syntax, code, wide=False):
    """def show(regs, off, imm, syms): the text of an instruction of opcode `code` in `syntax`
    (the kernel's "(xx) " included), or None when no row has its fields. Every row of the
    opcode inlined: its bounds as comparisons, its printer (spelling.printer_source)."""
    field = isa.DISCRIMINATOR[code]
    rows = [row for row in isa.OPS if row.code == code]
    native = _NATIVE_WIDE if wide else _NATIVE
    lines = ["dst = regs & 15", "src = regs >> 4"]
    prefix = f"({code:02x}) " if syntax == "kernel" else ""
    for i, row in enumerate(rows):
        body = [line.replace('return f"', 'return f"' + prefix, 1) for line in printer_source(syntax, row)]
        if any(_OP.search(line) for line in body):
            body.insert(0, f"op = ROWS[{i}]")
        bad = _out_of_bounds(row, native, field)
        if bad:
            body[:0] = [f"if {bad}:", "    return None"]
        if field is not None:
            body = [f"if {field} == {row.fixed_value(field)}:"] + ["    " + line for line in body]
        lines += body
    if field is not None:
        lines.append("return None")
    return "def show(regs, off, imm, syms):\n" + "".join(f"    {line}\n" for line in lines), rows


def _compile(syntax, code, wide=False):
    source, rows = _opcode_source(syntax, code, wide)
    namespace = dict(PRINT_NAMESPACE, ROWS=rows, op=rows[0])
    exec(compile(source, f"<{syntax} {code:#04x}>", "exec"), namespace)
    return namespace["show"]


def _nothing(regs, off, imm, syms):
    return None


def _on_first_use(shows, syntax, code):
    """A stand-in for opcode `code`'s show: compiles it, in its place, when first called."""
    def show(regs, off, imm, syms):
        shows[code] = _compile(syntax, code)
        return shows[code](regs, off, imm, syms)
    return show


class _Opcodes(dict):
    """syntax -> [show for each opcode byte] (and, under (syntax, "wide"), ld_imm64's, which
    takes the 64-bit immediate), each compiled on first use: a program meets few opcodes."""

    def __missing__(self, key):
        if isinstance(key, tuple):
            value = _compile(key[0], _LD_IMM64, wide=True)
        else:
            value = [_nothing] * 256
            for code in isa.DISCRIMINATOR:
                if code != _LD_IMM64:
                    value[code] = _on_first_use(value, key, code)
        self[key] = value
        return value


_OPCODES = _Opcodes()
_KERNEL_PREFIX = [f"({code:02x}) " for code in range(256)]


def _unusual(raw, syntax, symbols):
    """(text, slots, cacheable) of what the fast path leaves: invalid slots (with insn.decode's
    exact reason), xlated code's r11, and ld_imm64 with a bad second slot."""
    insn = _decode_one(raw, symbols)
    if insn.op is None:
        return _body(insn, syntax, symbols), 1, False
    text = PRINTERS[syntax][insn.op](insn.dst, insn.src, insn.off, insn.imm, symbols)
    return (_KERNEL_PREFIX[insn.op.code] + text if syntax == "kernel" else text), insn.op.slots, True


_SAMPLE = 4096  # slots
_REPEATS = 0.8  # distinct slots in the sample at most, for the cache to pay (a lookup costs a fifth of a print)


def _texts(data, syntax, symbols):
    """(texts, wide) of bytecode: each instruction's text, and the indexes of the two-slot ones.

    Slots are read by one iter_unpack and printed by their opcode's function. A cache maps
    slots to text, so identical slots format once: a real program repeats many. Where a
    sample of the slots hardly repeats, looking each one up would cost more than it saves."""
    shows, show_wide = _OPCODES[syntax], _OPCODES[syntax, "wide"]
    whole = len(data) & ~7
    view = memoryview(data)[:whole]  # data: bytes
    sample = view[:8 * _SAMPLE]
    caching = len(set(_SLOT.iter_unpack(sample))) <= _REPEATS * (len(sample) >> 3)
    cache = {}
    get = cache.get
    texts, wide = [], []
    add = texts.append
    slots = _SLOT.iter_unpack(view)
    while True:
        for slot in slots:
            if caching:
                text = get(slot)
                if text is not None:
                    add(text)
                    continue
            code, regs, off, imm = slot
            text = shows[code](regs, off, imm, symbols)
            if text is not None:
                if caching:
                    cache[slot] = text
                add(text)
                continue
            if code != _LD_IMM64:
                text, _, cacheable = _unusual(_SLOT.pack(*slot), syntax, symbols)
                if cacheable:
                    cache[slot] = text
                add(text)
                continue
            # ld_imm64: its second slot holds imm's high half, and nothing else
            second = next(slots, None)
            key = (slot, second)
            text = get(key)
            if text is None and second is not None and not (second[0] or second[1] or second[2]):
                text = show_wide(regs, off, (second[3] & U32) << 32 | imm & U32, symbols)
            if text is None:
                raw = _SLOT.pack(*slot) + (b"" if second is None else _SLOT.pack(*second))
                text, used, cacheable = _unusual(raw, syntax, symbols)
                if used == 1:
                    add(text)
                    if second is not None:  # no instruction's half: read on from it
                        slots = chain((second,), slots)
                        break
                    continue
            cache[key] = text
            wide.append(len(texts))
            add(text)
        else:
            break
    if whole < len(data):
        raw = bytes(data[whole:])
        add(_body(InvalidInsn(raw, f"truncated instruction: {len(raw)} bytes"), syntax, symbols))
    return texts, wide


def _pcs(count, wide):
    """The first slot of each of `count` instructions, `wide` the indexes of the two-slot ones."""
    if not wide:
        return range(count)
    out, start = [], 0
    for shift, index in enumerate(wide):
        out += range(start + shift, index + 1 + shift)
        start = index + 1
    out += range(start + len(wide), count + len(wide))
    return out


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
    texts, wide = _texts(bytes(code), syntax, symbols)
    if not pcs:
        return "\n".join(texts) + ("\n" if texts else "")
    return _numbered(texts, wide, syntax == "llvm")


def _numbered(texts, wide, llvm):
    """The lines with their pc column, as llvm-objdump ("%8d:\t") or bpftool ("% 4d: ") prints
    it: one %-format in C, the padding spelled out for each run of pcs of as many digits."""
    count = len(texts)
    pcs = _pcs(count, wide)
    columns = [None] * (2 * count)
    columns[::2] = pcs
    columns[1::2] = texts
    formats, start, digits = [], 0, 1
    while start < count:
        end = bisect_left(pcs, 10 ** digits, start)
        pad = " " * (max(8 - digits, 0) if llvm else max(4 - digits, 1))
        formats.append((pad + ("%d:\t%s\n" if llvm else "%d: %s\n")) * (end - start))
        start, digits = end, digits + 1
    return "".join(formats) % tuple(columns)


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
    texts, wide = _texts(data, syntax, symbols)
    at = list(_pcs(len(texts), wide))
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
