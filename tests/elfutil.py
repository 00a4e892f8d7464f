"""A minimal ELF64 relocatable object around BPF bytecode, for llvm-objdump.

Just enough ELF for `llvm-objdump -d` to disassemble: a null section, an
executable .text holding the bytes, a symbol table with one function symbol
at offset 0 (so objdump prints the function header it prints for clang
output), and the two string tables.
"""
import struct

EM_BPF = 247
ET_REL = 1
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB = 1, 2, 3
SHF_ALLOC, SHF_EXECINSTR = 0x2, 0x4
STB_GLOBAL, STT_FUNC = 1, 2

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")


def bpf_elf(code, symbol="prog"):
    """Bytes of an ELF64 little-endian EM_BPF relocatable with `code` as .text."""
    shstrtab = b"\0.text\0.symtab\0.strtab\0.shstrtab\0"
    strtab = b"\0" + symbol.encode() + b"\0"
    symtab = _SYM.pack(0, 0, 0, 0, 0, 0) + _SYM.pack(1, (STB_GLOBAL << 4) | STT_FUNC, 0, 1, 0, len(code))

    body = bytearray()
    offsets = []
    for blob in (code, symtab, strtab, shstrtab):
        while (_EHDR.size + len(body)) % 8:
            body.append(0)
        offsets.append(_EHDR.size + len(body))
        body += blob
    while (_EHDR.size + len(body)) % 8:
        body.append(0)
    shoff = _EHDR.size + len(body)

    text_off, sym_off, str_off, shstr_off = offsets
    sections = [
        _SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
        _SHDR.pack(1, SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, 0, text_off, len(code), 0, 0, 8, 0),
        _SHDR.pack(7, SHT_SYMTAB, 0, 0, sym_off, len(symtab), 3, 1, 8, _SYM.size),
        _SHDR.pack(15, SHT_STRTAB, 0, 0, str_off, len(strtab), 0, 0, 1, 0),
        _SHDR.pack(23, SHT_STRTAB, 0, 0, shstr_off, len(shstrtab), 0, 0, 1, 0),
    ]
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = _EHDR.pack(ident, ET_REL, EM_BPF, 1, 0, 0, shoff, 0, _EHDR.size, 0, 0, _SHDR.size,
                        len(sections), 4)
    return header + bytes(body) + b"".join(sections)
