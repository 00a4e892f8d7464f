"""Bytecode back to text, read through the one isa table.

Three syntaxes, each driven by the table rows' kind/operation/c_op/bits:

kernel  what the verifier log and `bpftool prog dump xlated` print
        (kernel/bpf/disasm.c), line for line:
            "   0: (b7) r0 = 0"     "   4: (63) *(u32 *)(r10 -4) = r1"
        pseudo ld_imm64 forms (bpftool's where it has one):
            map[fd:N]  map[fd:N][0]+OFF  (raw bytecode: imm is a map fd)
            map[id:N]  map[id:N][0]+OFF  (xlated dumps: the kernel put map ids there)
            map[idx:N] map[idx:N][0]+OFF btf_id[N]  subprog[+N]
        call forms: "call bpf_map_lookup_elem#1", "call unknown#N", "call pc+N",
        "call kernel-function#ID" (" off N" appended when a kfunc names a module BTF).
llvm    what `llvm-objdump -d --mcpu=v4` prints ("r1 += 0x5", "r1 = 0x1 ll",
        "w1 = *(u32 *)(r2 - 0x4)", "if w1 s> -0x5 goto +0x3"), lines as with
        --no-show-raw-insn ("       0:\\tr1 += 0x5"), without objdump's "<sym+0x..>"
        target comments. Where objdump's text loses bits, a readable extension:
        "call pc+0x5" (bpf-to-bpf), "call kfunc 0x5[, 0xOFF]", "skb[r3 + 0x4]"
        (ld_ind with a non-zero imm), ld_pseudo's imm printed in full 64 bits.
ubpf    mnemonics as ubpf's (dis)assembler: "mov %r0, 0x0", "ldxw %r1, [%r2+4]",
        "jgt %r1, %r2, +3", "lddw %r0, 0x1122334455667788", "call 0x1",
        "call local +3"; instructions ubpf lacks use the table's row name
        ("sdiv32 %r1, 0x5", "movsx816...", "lock_fetch_add [%r1+0], %r2",
        "ld_map_fd %r1, 0x3", "ld_map_value %r1, 0x3, 0x8", "ld_func %r1, +2",
        "gotol +5", "may_goto +2", "call_kfunc 0x5[, 2]", "ldabsw 0xc", "ldindw %r1, 0xc").

Bytes that are no instruction print as "invalid: REASON [xx xx ...]" (after
the kernel syntax's "(op) ") and disassembly goes on with the next slot.

Speed: formatted text is cached per raw slot (the text of an instruction is a
pure function of its 8 or 16 bytes and the options), so a real program costs a
dict lookup per instruction after its first distinct slots.
"""
import struct

from . import helpers, isa
from ..errors import BpfError
from .insn import Insn
from .insn import decode as _decode

_SLOT = struct.Struct("<BBhi")

SYNTAXES = ("kernel", "llvm", "ubpf")

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_LD_IMM64 = isa.LD | isa.MODE_IMM | isa.SIZE_DW


def _shex(value):
    """LLVM's signed hex: 0x5, -0x4."""
    return f"-{-value:#x}" if value < 0 else f"{value:#x}"


def _phex(value):
    """LLVM's jump offset: +0x3, -0x4."""
    return f"-{-value:#x}" if value < 0 else f"+{value:#x}"


def _s64(value):
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


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
        address = (self.call_base + imm) & _U64
        if src == isa.CALL_PSEUDO and 0 <= imm < len(self.jited_ksyms):
            address = self.jited_ksyms[imm]
        sym = self.by_address.get(address)
        if src == isa.CALL_PSEUDO:
            if not self.jited_ksyms:
                return f"{off:+d}"
            return f"{off:+d}#{sym}" if sym else f"{off:+d}#{address:#x}"
        return sym if sym else f"{address:#x}"


RAW = Symbols()


# -- kernel syntax ----------------------------------------------------------

def _k_mem(reg, off):
    return f"(r{reg} {off:+d})"


def _kernel_text(op, dst, src, off, imm, syms):
    kind = op.kind
    bits = op.bits
    if kind == "alu":
        r = "w" if bits == 32 else "r"
        if op.source == "imm":
            return f"{r}{dst} {op.c_op} {imm}"
        return f"{r}{dst} {op.c_op} {r}{src}"
    if kind in ("ldx", "ldxs"):
        sign = "u" if kind == "ldx" else "s"
        return f"r{dst} = *({sign}{bits} *){_k_mem(src, off)}"
    if kind == "stx":
        return f"*(u{bits} *){_k_mem(dst, off)} = r{src}"
    if kind == "st":
        return f"*(u{bits} *){_k_mem(dst, off)} = {imm}"
    if kind == "jmp":
        r = "w" if bits == 32 else "r"
        rhs = f"{imm & _U32:#x}" if op.source == "imm" else f"{r}{src}"
        return f"if {r}{dst} {op.c_op} {rhs} goto pc{off:+d}"
    if kind == "ja":
        return f"goto pc{off:+d}"
    if kind == "exit":
        return "exit"
    if kind == "call":
        return _kernel_call(op, src, off, imm, syms)
    if kind == "callx":  # (the kernel has no spelling for it: LLVM's)
        return f"callx r{dst}"
    if kind == "ld_imm64":
        return f"r{dst} = {_kernel_ld_imm64(src, imm, syms)}"
    if kind == "neg":
        r = "w" if bits == 32 else "r"
        return f"{r}{dst} = -{r}{dst}"
    if kind == "movsx":
        r = "w" if bits == 32 else "r"
        return f"{r}{dst} = ({op.operation}){r}{src}"
    if kind in ("end", "bswap"):
        return f"r{dst} = {op.operation}{imm} r{dst}"
    if kind == "atomic":
        return _kernel_atomic(op, dst, src, off)
    if kind == "gotol":
        return f"gotol pc{imm:+d}"
    if kind == "may_goto":
        return f"may_goto pc{off:+d}"
    if kind == "ld_abs":
        return f"r0 = *(u{bits} *)skb[{imm}]"
    if kind == "ld_ind":
        return f"r0 = *(u{bits} *)skb[r{src} + {imm}]"
    raise AssertionError(f"no kernel format for kind {kind}")


def _kernel_call(op, src, off, imm, syms):
    # disasm.c's __func_get_name: a known helper id wins, then the dumper's callback.
    if src == isa.CALL_HELPER:
        name = helpers.name_of(imm)
        if name:
            return f"call {name}#{imm}"
    if syms.xlated:
        name = syms.call_name(src, imm, off)
        return f"call pc{name}" if src == isa.CALL_PSEUDO else f"call {name}#{imm}"
    if src == isa.CALL_PSEUDO:
        return f"call pc{imm:+d}"
    if src == isa.CALL_KFUNC:
        return f"call kernel-function#{imm}" + (f" off {off}" if off else "")
    return f"call unknown#{imm}"


def _kernel_ld_imm64(src, imm, syms):
    lo, hi = imm & _U32, (imm >> 32) & _U32
    if src == isa.PSEUDO_MAP_FD:
        return f"map[id:{lo}]" if syms.xlated else f"map[fd:{lo}]"
    if src == isa.PSEUDO_MAP_VALUE:
        return f"map[id:{lo}][0]+{hi}" if syms.xlated else f"map[fd:{lo}][0]+{hi}"
    if src == isa.PSEUDO_FUNC:
        return f"subprog[{_s32(lo):+d}]"
    if syms.xlated or src == 0:
        return f"{imm & _U64:#x}"
    if src == isa.PSEUDO_MAP_IDX:
        return f"map[idx:{lo}]"
    if src == isa.PSEUDO_MAP_IDX_VALUE:
        return f"map[idx:{lo}][0]+{hi}"
    return f"btf_id[{lo}]" if not hi else f"btf_id[{imm & _U64:#x}]"  # hi: a module BTF's fd


def _s32(value):
    return value - (1 << 32) if value >> 31 else value


def _kernel_atomic(op, dst, src, off):
    bits = op.bits
    mem = f"(u{bits} *){_k_mem(dst, off)}"
    wide = "64" if bits == 64 else ""
    name = op.operation
    if name in ("add", "or", "and", "xor"):
        return f"lock *{mem} {op.c_op} r{src}"
    if name.startswith("fetch_"):
        return f"r{src} = atomic{wide}_{name}({mem}, r{src})"
    if name == "xchg":
        return f"r{src} = atomic{wide}_xchg({mem}, r{src})"
    return f"r0 = atomic{wide}_cmpxchg({mem}, r0, r{src})"


# -- llvm syntax ------------------------------------------------------------

def _l_mem(reg, off):
    return f"r{reg} - {-off:#x}" if off < 0 else f"r{reg} + {off:#x}"


def _llvm_text(op, dst, src, off, imm, syms):
    kind = op.kind
    bits = op.bits
    r = "w" if bits == 32 else "r"
    if kind == "alu":
        return f"{r}{dst} {op.c_op} {_shex(imm) if op.source == 'imm' else f'{r}{src}'}"
    if kind in ("ldx", "ldxs"):
        if kind == "ldxs":
            return f"r{dst} = *(s{bits} *)({_l_mem(src, off)})"
        return f"{'r' if bits == 64 else 'w'}{dst} = *(u{bits} *)({_l_mem(src, off)})"
    if kind == "stx":
        return f"*(u{bits} *)({_l_mem(dst, off)}) = {'r' if bits == 64 else 'w'}{src}"
    if kind == "st":
        return f"*(u{bits} *)({_l_mem(dst, off)}) = {_shex(imm)}"
    if kind == "jmp":
        rhs = _shex(imm) if op.source == "imm" else f"{r}{src}"
        return f"if {r}{dst} {op.c_op} {rhs} goto {_phex(off)}"
    if kind == "ja":
        return f"goto {_phex(off)}"
    if kind == "exit":
        return "exit"
    if kind == "call":
        if src == isa.CALL_PSEUDO:
            return f"call pc{_phex(imm)}"
        if src == isa.CALL_KFUNC:
            return f"call kfunc {_shex(imm)}" + (f", {_shex(off)}" if off else "")
        return f"call {_shex(imm)}"
    if kind == "callx":
        return f"callx r{dst}"
    if kind == "ld_imm64":
        if src == 0:
            return f"r{dst} = {_shex(_s64(imm))} ll"
        return f"ld_pseudo\tr{dst}, {src:#x}, {imm & _U64:#x}"
    if kind == "neg":
        return f"{r}{dst} = -{r}{dst}"
    if kind == "movsx":
        return f"{r}{dst} = ({op.operation}){r}{src}"
    if kind in ("end", "bswap"):
        return f"r{dst} = {op.operation}{imm} r{dst}"
    if kind == "atomic":
        return _llvm_atomic(op, dst, src, off)
    if kind == "gotol":
        return f"gotol {_phex(imm)}"
    if kind == "may_goto":
        return f"may_goto {_phex(off)}"
    if kind == "ld_abs":
        return f"r0 = *(u{bits} *)skb[{_shex(imm)}]"
    if kind == "ld_ind":
        return f"r0 = *(u{bits} *)skb[r{src}{f' + {_shex(imm)}' if imm else ''}]"
    raise AssertionError(f"no llvm format for kind {kind}")


def _llvm_atomic(op, dst, src, off):
    bits = op.bits
    r = "r" if bits == 64 else "w"
    mem = _l_mem(dst, off)
    name = op.operation
    if name in ("add", "or", "and", "xor"):
        return f"lock *(u{bits} *)({mem}) {op.c_op} {r}{src}"
    if name.startswith("fetch_"):
        return f"{r}{src} = atomic_{name}((u{bits} *)({mem}), {r}{src})"
    suffix = "_64" if bits == 64 else "32_32"
    if name == "xchg":
        return f"{r}{src} = xchg{suffix}({mem}, {r}{src})"
    return f"{r}0 = cmpxchg{suffix}({mem}, {r}0, {r}{src})"


# -- ubpf syntax ------------------------------------------------------------

def _u_off(off):
    return f"+{off}" if off >= 0 else str(off)


def _u_mem(reg, off):
    return f"[%r{reg}{_u_off(off)}]" if off else f"[%r{reg}]"


def _ubpf_text(op, dst, src, off, imm, syms):
    kind = op.kind
    name = op.name
    if kind == "alu":
        rhs = f"{imm & _U32:#x}" if op.source == "imm" else f"%r{src}"
        return f"{name} %r{dst}, {rhs}"
    if kind in ("ldx", "ldxs"):
        return f"{name} %r{dst}, {_u_mem(src, off)}"
    if kind == "stx" or kind == "atomic":
        return f"{name} {_u_mem(dst, off)}, %r{src}"
    if kind == "st":
        return f"{name} {_u_mem(dst, off)}, {imm & _U32:#x}"
    if kind == "jmp":
        rhs = f"{imm & _U32:#x}" if op.source == "imm" else f"%r{src}"
        return f"{name} %r{dst}, {rhs}, {_u_off(off)}"
    if kind in ("ja", "may_goto"):
        return f"{name} {_u_off(off)}"
    if kind == "gotol":
        return f"gotol {_u_off(imm)}"
    if kind == "exit":
        return "exit"
    if kind == "call":
        if src == isa.CALL_PSEUDO:
            return f"call local {_u_off(imm)}"
        if src == isa.CALL_KFUNC:
            return f"call_kfunc {imm & _U32:#x}" + (f", {off}" if off else "")
        return f"call {imm & _U32:#x}"
    if kind == "callx":
        return f"call %r{dst}"
    if kind == "ld_imm64":
        lo, hi = imm & _U32, (imm >> 32) & _U32
        if src == 0:
            return f"lddw %r{dst}, {imm & _U64:#x}"
        if src == isa.PSEUDO_FUNC and not hi:
            return f"ld_func %r{dst}, {_u_off(_s32(lo))}"
        return f"{name} %r{dst}, {lo:#x}" + (f", {hi:#x}" if hi or src in (2, 6) else "")
    if kind in ("neg", "end", "bswap"):
        return f"{name} %r{dst}"
    if kind == "movsx":
        return f"{name} %r{dst}, %r{src}"
    if kind == "ld_abs":
        return f"{name} {imm & _U32:#x}"
    if kind == "ld_ind":
        return f"{name} %r{src}, {imm & _U32:#x}"
    raise AssertionError(f"no ubpf format for kind {kind}")


_TEXT = {"kernel": _kernel_text, "llvm": _llvm_text, "ubpf": _ubpf_text}


def _check_syntax(syntax):
    if syntax not in _TEXT:
        raise BpfError(f"unknown syntax {syntax!r} (choose from {', '.join(SYNTAXES)})")
    return _TEXT[syntax]


def _invalid_text(raw, reason):
    return f"invalid: {reason} [{raw.hex(' ')}]"


def _body(insn, syntax, syms):
    """Text of one Insn/InvalidInsn in `syntax`, with the kernel's "(op) " prefix."""
    if insn.op is None:
        raw = insn.raw
        text = _invalid_text(raw, insn.reason)
        return f"({raw[0]:02x}) {text}" if syntax == "kernel" and raw else text
    text = _TEXT[syntax](insn.op, insn.dst, insn.src, insn.off, insn.imm, syms)
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


def _decoded_text(data, pos, fmt, kernel, symbols):
    """(raw bytes, text, cacheable) of the instruction at data[pos:], through insn.decode:
    ld_imm64, invalid slots (with their exact reason) and xlated code's r11."""
    insn = _decode_one(data[pos:pos + 16], symbols)
    if insn.op is None:
        return insn.raw, _body(insn, "kernel" if kernel else "", symbols), False
    text = fmt(insn.op, insn.dst, insn.src, insn.off, insn.imm, symbols)
    return data[pos:pos + 8 * insn.op.slots], _KERNEL_PREFIX[insn.op.code] + text if kernel else text, True


def _slots(data, syntax, symbols, pcs=True):
    """(pcs, texts) of the instructions of `data`: each one's first slot and its text body
    (pcs is None when not asked for).

    The cache maps raw slot bytes to text: identical slots format once. A valid
    one-slot instruction missing from it is read straight from its fields (the
    checks of insn.decode, without building an Insn): a program with no repeats
    costs that per instruction.
    """
    fmt = _TEXT[syntax]
    kernel = syntax == "kernel"
    unpack, rows = _SLOT.unpack_from, _ROWS
    cache = {}
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
                    text = fmt(row, dst, src, off, imm, symbols)
                    if kernel:
                        text = _KERNEL_PREFIX[code] + text
                    cache[key] = text
            elif code == _LD_IMM64:  # cached under both its slots
                text = cache.get(data[pos:pos + 16])
                if text is not None:
                    key = data[pos:pos + 16]
        if text is None:
            key, text, cacheable = _decoded_text(data, pos, fmt, kernel, symbols)
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
    if kind in ("jmp", "ja", "may_goto"):
        entry["target"] = pc + 1 + insn.off
    elif kind == "gotol":
        entry["target"] = pc + 1 + insn.imm
    elif kind == "call":
        if insn.src == isa.CALL_PSEUDO:
            entry["target"] = pc + 1 + (insn.off if symbols.xlated else insn.imm)
        elif insn.src == isa.CALL_HELPER:
            name = helpers.name_of(insn.imm)
            if name:
                entry["helper"] = name
            elif symbols.xlated:
                entry["helper"] = symbols.call_name(insn.src, insn.imm, insn.off)
    elif kind == "ld_imm64":
        lo, hi = insn.imm & _U32, (insn.imm >> 32) & _U32
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
            entry["target"] = pc + 1 + _s32(lo)
