"""ELF symbols to the file offsets uprobes take.

A uprobe names a file and a byte offset in it. A symbol's value is a virtual
address; the PT_LOAD program header holding it maps it back to the file:
offset = value - p_vaddr + p_offset. Symbols come from .dynsym (what a
stripped library still exports) and .symtab (when not stripped); .dynsym
names get their versions from .gnu.version with .gnu.version_d/_r, spelled as
nm and llvm-readelf do: SSL_write@@OPENSSL_3.0.0 (the default version),
SSL_write@OPENSSL_3.0.0 (an older, hidden one).

    elf = ElfFile("/usr/lib/x86_64-linux-gnu/libssl.so.3")
    elf.offset("SSL_write")                  # -> 0x35980
    elf.find("SSL_write@@OPENSSL_3.0.0")     # -> Symbol(...)

64-bit little-endian ELF (x86_64, aarch64) only; files without section
headers (sstrip) are refused with one line.
"""
import dataclasses
import mmap
import os

import construct as c

from .errors import ElfError, SymbolNotFound
from .layout import codec

ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB = 2, 1
PT_LOAD = 1
PF_X = 1
SHT_SYMTAB, SHT_STRTAB, SHT_DYNSYM = 2, 3, 11
SHT_GNU_VERDEF, SHT_GNU_VERNEED, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
SHN_UNDEF = 0
VERSYM_HIDDEN = 0x8000  # not the default version: name@VERSION, where the default is name@@VERSION
VER_NDX_GLOBAL = 1  # unversioned
STT = {0: "NOTYPE", 1: "OBJECT", 2: "FUNC", 3: "SECTION", 4: "FILE", 5: "COMMON", 6: "TLS", 10: "IFUNC"}
STB = {0: "LOCAL", 1: "GLOBAL", 2: "WEAK", 10: "UNIQUE"}
CODE_TYPES = ("FUNC", "IFUNC", "NOTYPE")  # what can sit at an address a uprobe takes

Ident = c.Struct(
    "magic" / c.Bytes(4),
    "elf_class" / c.Int8ul,
    "data" / c.Int8ul,
    "version" / c.Int8ul,
    "osabi" / c.Int8ul,
    "abiversion" / c.Int8ul,
    c.Padding(7),
)
assert Ident.sizeof() == 16

Elf64Ehdr = c.Struct(
    "ident" / Ident,
    "type" / c.Int16ul,
    "machine" / c.Int16ul,
    "version" / c.Int32ul,
    "entry" / c.Int64ul,
    "phoff" / c.Int64ul,
    "shoff" / c.Int64ul,
    "flags" / c.Int32ul,
    "ehsize" / c.Int16ul,
    "phentsize" / c.Int16ul,
    "phnum" / c.Int16ul,
    "shentsize" / c.Int16ul,
    "shnum" / c.Int16ul,
    "shstrndx" / c.Int16ul,
)
assert Elf64Ehdr.sizeof() == 64

Elf64Phdr = c.Struct(
    "type" / c.Int32ul,
    "flags" / c.Int32ul,
    "offset" / c.Int64ul,
    "vaddr" / c.Int64ul,
    "paddr" / c.Int64ul,
    "filesz" / c.Int64ul,
    "memsz" / c.Int64ul,
    "align" / c.Int64ul,
)
assert Elf64Phdr.sizeof() == 56

Elf64Shdr = c.Struct(
    "name" / c.Int32ul,
    "type" / c.Int32ul,
    "flags" / c.Int64ul,
    "addr" / c.Int64ul,
    "offset" / c.Int64ul,
    "size" / c.Int64ul,
    "link" / c.Int32ul,
    "info" / c.Int32ul,
    "addralign" / c.Int64ul,
    "entsize" / c.Int64ul,
)
assert Elf64Shdr.sizeof() == 64

Elf64Sym = c.Struct(
    "name" / c.Int32ul,
    "info" / c.Int8ul,  # type in the low 4 bits, binding in the high 4
    "other" / c.Int8ul,  # visibility in the low 2 bits
    "shndx" / c.Int16ul,
    "value" / c.Int64ul,
    "size" / c.Int64ul,
)
assert Elf64Sym.sizeof() == 24

Elf64Verdef = c.Struct(
    "version" / c.Int16ul,
    "flags" / c.Int16ul,
    "ndx" / c.Int16ul,
    "cnt" / c.Int16ul,
    "hash" / c.Int32ul,
    "aux" / c.Int32ul,  # offset of the first Verdaux, from this entry
    "next" / c.Int32ul,  # offset of the next Verdef, from this entry; 0 ends
)
assert Elf64Verdef.sizeof() == 20

Elf64Verdaux = c.Struct("name" / c.Int32ul, "next" / c.Int32ul)
assert Elf64Verdaux.sizeof() == 8

Elf64Verneed = c.Struct(
    "version" / c.Int16ul,
    "cnt" / c.Int16ul,
    "file" / c.Int32ul,
    "aux" / c.Int32ul,
    "next" / c.Int32ul,
)
assert Elf64Verneed.sizeof() == 16

Elf64Vernaux = c.Struct(
    "hash" / c.Int32ul,
    "flags" / c.Int16ul,
    "other" / c.Int16ul,  # the version index symbols refer to
    "name" / c.Int32ul,
    "next" / c.Int32ul,
)
assert Elf64Vernaux.sizeof() == 16

_CODECS = {layout: codec(layout) for layout in
           (Elf64Ehdr, Elf64Phdr, Elf64Shdr, Elf64Sym, Elf64Verdef, Elf64Verdaux, Elf64Verneed, Elf64Vernaux)}
_VERSYM = codec(c.Int16ul)


@dataclasses.dataclass(frozen=True)
class Symbol:
    name: str  # without its version
    version: str  # "" when unversioned
    default: bool  # the default version (name@@version); False: a hidden one (name@version)
    value: int
    size: int
    type: str  # STT name: FUNC, OBJECT, IFUNC, ...
    bind: str  # STB name: GLOBAL, WEAK, LOCAL, ...
    shndx: int  # section index; 0: undefined (a reference to another file)
    table: str  # ".dynsym" or ".symtab"

    @property
    def defined(self):
        return self.shndx != SHN_UNDEF

    @property
    def versioned_name(self):
        """The name as nm -D and llvm-readelf --dyn-syms print it."""
        if not self.version:
            return self.name
        return f"{self.name}{'@@' if self.default and self.defined else '@'}{self.version}"


@dataclasses.dataclass(frozen=True)
class Segment:
    """A PT_LOAD program header."""
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int

    @property
    def executable(self):
        return bool(self.flags & PF_X)


def split_version(text):
    """'SSL_write@@V' -> ('SSL_write', 'V', True); 'x@V' -> ('x', 'V', False); 'x' -> ('x', '', None)."""
    name, at, version = text.partition("@")
    if not at:
        return text, "", None
    if version.startswith("@"):
        return name, version[1:], True
    return name, version, False


class ElfFile:
    """The symbols and load segments of one ELF file, read once (mmap) at construction."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) if size else b""
        except OSError as e:
            raise ElfError(f"{self.path}: cannot read: {e.strerror}") from None
        try:
            self._parse(data)
        finally:
            if isinstance(data, mmap.mmap):
                data.close()

    # -- reading -------------------------------------------------------------------------
    def _error(self, what):
        return ElfError(f"{self.path}: {what}")

    def _struct(self, data, layout, offset):
        size = layout.sizeof()
        if offset < 0 or offset + size > len(data):
            raise self._error(f"truncated: a {size}-byte header at {offset:#x} lies past the end")
        return _CODECS[layout].decode(data[offset:offset + size])

    def _bytes(self, data, offset, size, what):
        if offset < 0 or size < 0 or offset + size > len(data):
            raise self._error(f"truncated: {what} at {offset:#x}+{size:#x} lies past the end")
        return bytes(data[offset:offset + size])

    def _parse(self, data):
        if len(data) < 16 or data[:4] != ELF_MAGIC:
            raise self._error("not an ELF file")
        ident = Ident.parse(bytes(data[:16]))
        if ident.elf_class != ELFCLASS64 or ident.data != ELFDATA2LSB:
            raise self._error("only 64-bit little-endian ELF files are read")
        h = self._struct(data, Elf64Ehdr, 0)
        self.machine, self.type = h.machine, h.type
        self.segments = []
        for i in range(h.phnum):
            ph = self._struct(data, Elf64Phdr, h.phoff + i * h.phentsize)
            if ph.type == PT_LOAD:
                self.segments.append(Segment(ph.offset, ph.vaddr, ph.filesz, ph.memsz, ph.flags))
        if not h.shnum:
            raise self._error("no section headers (stripped with sstrip?): no symbol tables to read")
        sections = [self._struct(data, Elf64Shdr, h.shoff + i * h.shentsize) for i in range(h.shnum)]
        names = sections[h.shstrndx] if h.shstrndx < len(sections) else None

        def contents(sh):
            return self._bytes(data, sh.offset, sh.size, "a section")

        shstr = contents(names) if names is not None else b""
        self.sections = {_cstr(shstr, sh.name): sh for sh in sections}
        self.symbols = []
        by_type = {}
        for sh in sections:
            by_type.setdefault(sh.type, sh)
        versions = self._versions(by_type, sections, contents)
        for kind, table in ((SHT_DYNSYM, ".dynsym"), (SHT_SYMTAB, ".symtab")):
            sh = by_type.get(kind)
            if sh is not None and sh.entsize == Elf64Sym.sizeof() and sh.link < len(sections):
                self.symbols += self._table(contents(sh), contents(sections[sh.link]), table,
                                            versions if kind == SHT_DYNSYM else None)
        self._by_name = {}
        for sym in self.symbols:
            self._by_name.setdefault(sym.name, []).append(sym)

    def _versions(self, by_type, sections, contents):
        """(versym indexes, {index: version name}) for .dynsym, or None when it has no versions."""
        versym = by_type.get(SHT_GNU_VERSYM)
        if versym is None:
            return None
        indexes = _VERSYM.decode_many(contents(versym), versym.size // 2)
        names = {}
        for kind, walk in ((SHT_GNU_VERDEF, self._verdef), (SHT_GNU_VERNEED, self._verneed)):
            sh = by_type.get(kind)
            if sh is not None and sh.link < len(sections):
                names.update(walk(contents(sh), contents(sections[sh.link]), sh.info))
        return indexes, names

    def _verdef(self, body, strings, count):
        out, pos = {}, 0
        for _ in range(count):
            vd = self._struct(body, Elf64Verdef, pos)
            if vd.cnt:
                aux = self._struct(body, Elf64Verdaux, pos + vd.aux)
                out[vd.ndx] = _cstr(strings, aux.name)
            if not vd.next:
                break
            pos += vd.next
        return out

    def _verneed(self, body, strings, count):
        out, pos = {}, 0
        for _ in range(count):
            vn = self._struct(body, Elf64Verneed, pos)
            apos = pos + vn.aux
            for _ in range(vn.cnt):
                va = self._struct(body, Elf64Vernaux, apos)
                out[va.other] = _cstr(strings, va.name)
                if not va.next:
                    break
                apos += va.next
            if not vn.next:
                break
            pos += vn.next
        return out

    def _table(self, body, strings, table, versions):
        count = len(body) // Elf64Sym.sizeof()
        out = []
        for index, sym in enumerate(_CODECS[Elf64Sym].decode_many(body, count)):
            if index == 0:  # the reserved null symbol
                continue
            text = _cstr(strings, sym.name)
            if not text:
                continue
            if versions is not None and index < len(versions[0]):
                ndx = versions[0][index]
                number = ndx & ~VERSYM_HIDDEN
                version = versions[1].get(number, "") if number > VER_NDX_GLOBAL else ""
                name, default = text, not ndx & VERSYM_HIDDEN
            else:  # .symtab spells versions into the name, where it has them at all
                name, version, marker = split_version(text)
                default = bool(marker)
            out.append(Symbol(name, version, default, sym.value, sym.size, STT.get(sym.info & 0xF, str(sym.info & 0xF)),
                              STB.get(sym.info >> 4, str(sym.info >> 4)), sym.shndx, table))
        return out

    # -- lookups -------------------------------------------------------------------------
    def find(self, text):
        """The defined symbol `text` names: "name", "name@@VERSION" (the default version) or
        "name@VERSION" (that version, default or not). A plain name takes the default version
        (as the dynamic linker binds it), or the unversioned symbol; .dynsym before .symtab."""
        name, version, marker = split_version(text)
        found = [s for s in self._by_name.get(name, ()) if s.defined]
        if marker is None:
            chosen = [s for s in found if not s.version or s.default]
        else:
            chosen = [s for s in found if s.version == version and (s.default or not marker)]
        if not chosen:
            others = sorted({s.versioned_name for s in found})
            hint = f" (it has {', '.join(others)})" if others else ""
            raise SymbolNotFound(f"{self.path}: no symbol {text}{hint}")
        chosen.sort(key=lambda s: s.table != ".dynsym")
        return chosen[0]

    def has(self, text):
        try:
            self.find(text)
        except SymbolNotFound:
            return False
        return True

    def file_offset(self, vaddr):
        """The file offset of virtual address `vaddr`, from the PT_LOAD segment holding it."""
        for seg in self.segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        raise ElfError(f"{self.path}: address {vaddr:#x} lies in no loaded segment")

    def code(self, vaddr, size):
        """`size` bytes of the file at virtual address `vaddr` (short at the end of its segment)."""
        offset = self.file_offset(vaddr)
        seg = next(s for s in self.segments if s.vaddr <= vaddr < s.vaddr + s.filesz)
        try:
            with open(self.path, "rb") as f:
                return os.pread(f.fileno(), min(size, seg.offset + seg.filesz - offset), offset)
        except OSError as e:
            raise ElfError(f"{self.path}: cannot read: {e.strerror}") from None

    def offset(self, text):
        """The file offset of the code symbol `text` names (find()): what a uprobe attaches at."""
        sym = self.find(text)
        if sym.type not in CODE_TYPES:
            raise ElfError(f"{self.path}: {sym.versioned_name} is {sym.type}, not code")
        if sym.type == "IFUNC":
            raise ElfError(f"{self.path}: {sym.versioned_name} is an IFUNC: its address is the resolver's, "
                           "not the function's")
        return self.file_offset(sym.value)


def _cstr(table, offset):
    end = table.find(b"\0", offset)
    return table[offset:end if end >= 0 else len(table)].decode(errors="surrogateescape")
