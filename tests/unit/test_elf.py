"""pybpf.elf against llvm-readelf and GNU nm, the independent readers: every library in the
system's library directory that exports SSL_write, a file with a .symtab and the same file
stripped (strip), and files that are no ELF this reader takes."""
import os
import re
import shutil
import subprocess

import pytest

from pybpf.elf import ElfError, ElfFile, SymbolNotFound, split_version
from tests import oracles

LIBDIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")
SSL_CALLS = ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex")
# llvm-readelf --dyn-syms / --syms -W:   "  564: 0000000000035980   131 FUNC    GLOBAL DEFAULT    13 SSL_write@@OPENSSL_3.0.0"
SYM_ROW = re.compile(r"^\s*\d+:\s+([0-9a-f]+)\s+(\d+|0x[0-9a-f]+)\s+(\w+)\s+(\w+)\s+\w+\s+(\w+)\s?(.*)$")
# llvm-readelf -l -W:   "  LOAD  0x01f000 0x000000000001f000 0x000000000001f000 0x05cf51 0x05cf51 R E 0x1000"
LOAD_ROW = re.compile(r"^\s*LOAD\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s+(0x[0-9a-f]+)\s+0x[0-9a-f]+\s")


def _run(tool, *args):
    r = subprocess.run([oracles.require(tool), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def ssl_libraries():
    """Every library file (by real path) in the library directory that exports SSL_write, as GNU
    nm sees it: found without our reader."""
    libdir = next((d for d in LIBDIRS if os.path.isdir(d)), None)
    if libdir is None:
        return []
    seen = set()
    for name in sorted(os.listdir(libdir)):
        path = os.path.realpath(os.path.join(libdir, name))
        if ".so" not in name or path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        with open(path, "rb") as f:
            if b"SSL_write" not in f.read():
                continue
        r = subprocess.run([oracles.require("nm"), "-D", "--defined-only", path],
                           capture_output=True, text=True, timeout=60)
        if any(line.split()[-1].split("@")[0] == "SSL_write" for line in r.stdout.splitlines() if line.split()):
            yield path


LIBRARIES = sorted(set(ssl_libraries())) if oracles.find("nm") else []
# libc: symbols in several versions, the old ones hidden (memcpy@GLIBC_2.2.5 beside memcpy@@GLIBC_2.14)
LIBC = next((p for p in (os.path.join(d, "libc.so.6") for d in LIBDIRS) if os.path.isfile(p)), None)
VERSIONED = LIBRARIES + ([os.path.realpath(LIBC)] if LIBC else [])


def readelf_symbols(path, table):
    """[(value, size, type, bind, defined, versioned name)] of .dynsym ("--dyn-syms") or
    .symtab ("--syms"), null symbol and empty names left out."""
    out, current = [], None
    for line in _run("llvm-readelf", "--dyn-syms" if table == ".dynsym" else "--syms", "-W", path).splitlines():
        if line.startswith("Symbol table"):
            current = line.split("'")[1]
            continue
        m = SYM_ROW.match(line)
        if m and current == table and m[6]:
            size = int(m[2], 0)
            out.append((int(m[1], 16), size, m[3], m[4], m[5] != "UND", m[6]))
    return out


def ours(elf, table):
    return [(s.value, s.size, s.type, s.bind, s.defined, s.versioned_name)
            for s in elf.symbols if s.table == table]


def load_segments(path):
    return [tuple(int(x, 16) for x in m.groups()) for m in map(LOAD_ROW.match, _run("llvm-readelf", "-l", "-W", path)
                                                             .splitlines()) if m]


def their_offset(segments, value):
    return next(value - vaddr + offset for offset, vaddr, filesz in segments if vaddr <= value < vaddr + filesz)


def test_there_is_a_library_exporting_ssl_write():
    if not LIBRARIES:
        pytest.skip("no library here exports SSL_write (or GNU nm is missing)")
    assert any("libssl" in os.path.basename(p) for p in LIBRARIES)


@pytest.mark.parametrize("path", VERSIONED)
def test_dynsym_matches_llvm_readelf(path):
    """Every .dynsym entry: value, size, type, binding, defined or not, versioned name."""
    assert ours(ElfFile(path), ".dynsym") == readelf_symbols(path, ".dynsym")


@pytest.mark.parametrize("path", VERSIONED)
def test_versioned_names_and_addresses_match_gnu_nm(path):
    nm = {}
    for line in _run("nm", "-D", "--defined-only", path).splitlines():
        address, _kind, name = line.split()
        nm[name] = int(address, 16)
    elf = ElfFile(path)
    # A version's own definition symbol (OPENSSL_3.0.0, absolute 0): nm prints it unversioned,
    # llvm-readelf as OPENSSL_3.0.0@@OPENSSL_3.0.0 (which we follow).
    mine = {s.name if s.name == s.version else s.versioned_name: s.value
            for s in elf.symbols if s.table == ".dynsym" and s.defined}
    assert mine == nm


@pytest.mark.parametrize("path", LIBRARIES)
def test_every_function_offset_from_the_program_headers(path):
    """The offset a uprobe takes, for every exported function, against llvm-readelf's LOAD rows;
    and the SSL calls by plain and versioned name."""
    elf = ElfFile(path)
    segments = load_segments(path)
    functions = [s for s in elf.symbols if s.defined and s.type == "FUNC"]
    assert functions
    for s in functions:
        assert elf.file_offset(s.value) == their_offset(segments, s.value), s
    for call in SSL_CALLS:
        if not elf.has(call):
            continue
        sym = elf.find(call)
        assert elf.offset(call) == their_offset(segments, sym.value)
        if sym.version:
            assert elf.offset(sym.versioned_name) == elf.offset(call)
            assert elf.offset(f"{call}@{sym.version}") == elf.offset(call)


@pytest.fixture(scope="module")
def with_symtab(tmp_path_factory):
    """libssl with a .symtab of its own (llvm-objcopy --add-symbol), and that file stripped (strip)."""
    source = next((p for p in LIBRARIES if "libssl" in os.path.basename(p)), None)
    if source is None:
        pytest.skip("no libssl here")
    directory = tmp_path_factory.mktemp("elf")
    full, stripped = str(directory / "libssl-symtab.so"), str(directory / "libssl-stripped.so")
    shutil.copy(source, directory / "copy.so")
    _run("llvm-objcopy", "--add-symbol", "hidden_helper=.text:0x40,function,local",
         "--add-symbol", "exported_too=.text:0x80,function,global", str(directory / "copy.so"), full)
    _run("strip", "-o", stripped, full)
    return full, stripped


def test_symtab_matches_llvm_readelf_and_nm(with_symtab):
    full, _ = with_symtab
    elf = ElfFile(full)
    assert ours(elf, ".symtab") == readelf_symbols(full, ".symtab")
    nm = {line.split()[2]: int(line.split()[0], 16) for line in _run("nm", "--defined-only", full).splitlines()}
    assert nm["hidden_helper"] == elf.find("hidden_helper").value
    segments = load_segments(full)
    assert elf.offset("hidden_helper") == their_offset(segments, nm["hidden_helper"])


def test_stripped_file_keeps_its_exports_and_loses_the_rest(with_symtab):
    full, stripped = with_symtab
    assert "no symbols" in subprocess.run([oracles.require("nm"), stripped], capture_output=True, text=True).stderr
    before, after = ElfFile(full), ElfFile(stripped)
    assert not [s for s in after.symbols if s.table == ".symtab"]
    for call in SSL_CALLS:
        assert after.offset(call) == before.offset(call)
    with pytest.raises(SymbolNotFound, match=r"libssl-stripped\.so: no symbol hidden_helper$"):
        after.offset("hidden_helper")


EXECUTABLE = """
.text
.globl _start
.globl probe_me
.type probe_me,@function
_start:
    nop
    ret
probe_me:
    nop
    nop
    ret
.size probe_me, 3
"""


@pytest.fixture(scope="module")
def executable(tmp_path_factory):
    """A static non-PIE executable (llvm-mc, GNU ld): its code lies at 0x401000, file offset 0x1000,
    unlike a shared library's where the two are equal; and the same file stripped."""
    if os.uname().machine != "x86_64":
        pytest.skip("the test executable is written in x86_64 assembly")
    directory = tmp_path_factory.mktemp("exe")
    (directory / "a.s").write_text(EXECUTABLE)
    _run("llvm-mc", "-filetype=obj", "-triple=x86_64-linux-gnu", str(directory / "a.s"), "-o", str(directory / "a.o"))
    _run("ld", "-o", str(directory / "a.out"), str(directory / "a.o"))
    _run("strip", "-o", str(directory / "stripped.out"), str(directory / "a.out"))
    return str(directory / "a.out"), str(directory / "stripped.out")


def test_executable_offset_is_not_its_address(executable):
    path, stripped = executable
    elf = ElfFile(path)
    value = int(next(line.split()[0] for line in _run("nm", path).splitlines() if line.endswith(" probe_me")), 16)
    segments = load_segments(path)
    assert elf.find("probe_me").value == value and not elf.find("probe_me").version
    assert elf.offset("probe_me") == their_offset(segments, value) != value
    with pytest.raises(SymbolNotFound, match=r"stripped\.out: no symbol probe_me$"):
        ElfFile(stripped).offset("probe_me")


def test_versions_and_errors_name_what_is_there():
    path = next((p for p in LIBRARIES if "libssl" in os.path.basename(p)), None)
    if path is None:
        pytest.skip("no libssl here")
    elf = ElfFile(path)
    version = elf.find("SSL_write").version
    assert version
    with pytest.raises(SymbolNotFound, match=rf"no symbol SSL_write@@NOPE_1 \(it has SSL_write@@{re.escape(version)}\)"):
        elf.find("SSL_write@@NOPE_1")
    with pytest.raises(ElfError, match="is OBJECT, not code|no symbol"):
        obj = next(s for s in elf.symbols if s.defined and s.type == "OBJECT")
        elf.offset(obj.versioned_name)


def test_a_plain_name_takes_the_default_version():
    if LIBC is None:
        pytest.skip("no libc.so.6 here")
    elf = ElfFile(LIBC)
    versions = [s for s in elf.symbols if s.name == "memcpy" and s.defined]
    hidden = [s for s in versions if not s.default]
    if not hidden:
        pytest.skip("this libc has one memcpy")
    assert elf.find("memcpy").default and elf.find("memcpy").value != hidden[0].value
    assert elf.find(hidden[0].versioned_name).value == hidden[0].value
    with pytest.raises(SymbolNotFound):
        elf.find(f"memcpy@@{hidden[0].version}")  # that version is there, but not as the default


def test_split_version():
    assert split_version("SSL_write@@OPENSSL_3.0.0") == ("SSL_write", "OPENSSL_3.0.0", True)
    assert split_version("memcpy@GLIBC_2.2.5") == ("memcpy", "GLIBC_2.2.5", False)
    assert split_version("plain") == ("plain", "", None)


@pytest.mark.parametrize("content,message", [
    (b"#!/bin/sh\necho not an elf\n", "not an ELF file"),
    (b"\x7fELF\x01\x01\x01" + bytes(9), "only 64-bit little-endian"),
    (b"\x7fELF\x02\x01\x01" + bytes(9) + bytes(8), "truncated"),
    (b"", "not an ELF file"),
])
def test_bad_files_one_line(tmp_path, content, message):
    path = tmp_path / "bad.so"
    path.write_bytes(content)
    with pytest.raises(ElfError, match=message) as e:
        ElfFile(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_file_one_line(tmp_path):
    with pytest.raises(ElfError, match="cannot read: No such file"):
        ElfFile(tmp_path / "absent.so")
