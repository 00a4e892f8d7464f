"""Where a uprobe on a function costs a trap, not a trap and a single step (x86-64).

A uprobe replaces the instruction at its address with int3. On the hit the kernel runs the
programs, then executes the instruction it replaced: emulated for the few it knows (push
of a register, call, jmp, jcc, nop), else single-stepped out of line, a second trap (#DB)
that costs ~9 us on a virtual machine (docs/benchmarks.md), ten times the rest.

An exported wrapper compiled as `sub $N,%rsp; call f` (OpenSSL 3's SSL_read_ex and
SSL_write_ex around ssl_read_internal and ssl_write_internal) hands its arguments to f
unchanged, and f's entry is a push: probing f instead gives the same arguments at entry,
the same bytes moved by the return, and one trap. Anything else is probed at its entry.
"""
import dataclasses
import struct

from .errors import ElfError

EM_X86_64 = 62
SUB_RSP_IMM8 = b"\x48\x83\xec"  # sub $imm8, %rsp
CALL_REL32 = 0xE8


@dataclasses.dataclass(frozen=True)
class Site:
    symbol: str  # the function it stands for
    offset: int  # file offset to probe
    followed: int = 0  # the address of the function called first, when that is what is probed
    covers: tuple = ()  # other functions whose calls it sees: they call it too, and are not probed


def _pushes(code):
    """Whether `code` starts with a push of a register: what the kernel emulates."""
    return len(code) >= 2 and (0x50 <= code[0] <= 0x57 or code[0] == 0x41 and 0x50 <= code[1] <= 0x57)


def _followed(elf, sym):
    """The address of the function `sym` hands its arguments to first, when worth probing, else 0."""
    head = elf.code(sym.value, 9)
    if len(head) < 9 or not head.startswith(SUB_RSP_IMM8) or head[4] != CALL_REL32:
        return 0
    callee = sym.value + 9 + struct.unpack_from("<i", head, 5)[0]
    try:
        return callee if _pushes(elf.code(callee, 2)) else 0
    except ElfError:  # a target outside the file's loaded code
        return 0


def _calls(elf, sym, vaddr):
    """Whether function `sym`'s code holds a direct call (call rel32) to `vaddr`."""
    code = elf.code(sym.value, sym.size) if sym.size else b""
    at = code.find(CALL_REL32)
    while 0 <= at <= len(code) - 5:
        if sym.value + at + 5 + struct.unpack_from("<i", code, at + 1)[0] == vaddr:
            return True
        at = code.find(CALL_REL32, at + 1)
    return False


def function_sites(elf, symbols):
    """[Site] to probe for the entries and returns of the functions `symbols` of ElfFile elf:
    each at its entry, or at the function its wrapper calls first (then a function that calls
    that one too is covered by it, not probed)."""
    syms = {name: elf.find(name) for name in symbols}
    followed = {}
    if elf.machine == EM_X86_64:
        followed = {name: _followed(elf, sym) for name, sym in syms.items()}
    sites, covered = [], {}
    for name in symbols:  # the followed ones first: the others may call them
        vaddr = followed.get(name, 0)
        if vaddr and vaddr not in covered:
            covered[vaddr] = []
            sites.append(Site(name, elf.file_offset(vaddr), vaddr))
    for name in symbols:
        if followed.get(name, 0):
            continue
        target = next((t for t in covered if _calls(elf, syms[name], t)), 0)
        if target:
            covered[target].append(name)
        else:
            sites.append(Site(name, elf.offset(name)))
    return [dataclasses.replace(s, covers=tuple(covered.get(s.followed, ()))) if s.followed else s
            for s in sites]
