"""pybpf.probesite: where a uprobe on a function costs one trap. The byte patterns are what gcc
makes of OpenSSL 3's SSL_read_ex (sub $8,%rsp; call ssl_read_internal) and SSL_read (which calls
ssl_read_internal further in); checked on this host's libssl when it has them."""
import os
import struct

import pytest

from pybpf.elf import ElfFile
from pybpf.errors import ElfError
from pybpf.probesite import EM_X86_64, Site, function_sites

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


class Sym:
    def __init__(self, value, size):
        self.value, self.size = value, size


class FakeElf:
    """Code at addresses (file offset = address + 0x1000), functions by name."""

    def __init__(self, functions, code, machine=EM_X86_64):
        self.functions, self.code_at, self.machine = functions, code, machine

    def find(self, name):
        return self.functions[name]

    def offset(self, name):
        return self.file_offset(self.functions[name].value)

    def file_offset(self, vaddr):
        if not any(at <= vaddr < at + len(code) for at, code in self.code_at.items()):
            raise ElfError(f"address {vaddr:#x} lies in no loaded segment")
        return vaddr + 0x1000

    def code(self, vaddr, size):
        for at, code in self.code_at.items():
            if at <= vaddr < at + len(code):
                return code[vaddr - at:vaddr - at + size]
        raise ElfError(f"address {vaddr:#x} lies in no loaded segment")


def call(at, target):
    """call rel32 at address `at` to `target`."""
    return b"\xe8" + struct.pack("<i", target - (at + 5))


INTERNAL = 0x100
INTERNAL_CODE = b"\x41\x55\x41\x54\x55\x53\x48\x83\xec\x38"  # push %r13; push %r12; push %rbp; ...
WRAPPER = 0x200
WRAPPER_CODE = b"\x48\x83\xec\x08" + call(WRAPPER + 4, INTERNAL) + b"\x31\xd2\xc3"
CALLER = 0x300  # sub $0x18,%rsp; mov %fs:0x28,%rax; ...; call internal; ...
CALLER_CODE = b"\x48\x83\xec\x18\x64\x48\x8b\x04\x25\x28\x00\x00\x00" + call(CALLER + 13, INTERNAL) + b"\xc3"
OTHER = 0x400  # calls something else
OTHER_CODE = b"\x48\x83\xec\x18" + call(OTHER + 4, 0x500) + b"\xc3"
PLAIN = 0x500  # sub $0x18,%rsp; ...: not a push
PLAIN_CODE = b"\x48\x83\xec\x18\x31\xc0\xc3"


def fake(changes=None):
    code = {INTERNAL: INTERNAL_CODE, WRAPPER: WRAPPER_CODE, CALLER: CALLER_CODE, OTHER: OTHER_CODE,
            PLAIN: PLAIN_CODE}
    code.update(changes or {})
    functions = {"wrapper": Sym(WRAPPER, len(code[WRAPPER])), "caller": Sym(CALLER, len(code[CALLER])),
                 "other": Sym(OTHER, len(code[OTHER])), "plain": Sym(PLAIN, len(code[PLAIN]))}
    return FakeElf(functions, code)


def test_a_wrapper_is_probed_in_the_function_it_calls_and_covers_its_other_callers():
    sites = function_sites(fake(), ["caller", "wrapper", "other", "plain"])
    assert sites == [Site("wrapper", INTERNAL + 0x1000, INTERNAL, ("caller",)),
                     Site("other", OTHER + 0x1000), Site("plain", PLAIN + 0x1000)]


def test_a_callee_that_does_not_start_with_a_push_is_not_followed():
    elf = fake({INTERNAL: b"\x48\x83\xec\x38" + INTERNAL_CODE})
    assert function_sites(elf, ["wrapper", "caller"]) == [Site("wrapper", WRAPPER + 0x1000),
                                                        Site("caller", CALLER + 0x1000)]


@pytest.mark.parametrize("head", [b"\x48\x83\xec\x08\x90" + call(WRAPPER + 5, INTERNAL),  # something between
                                  b"\x48\x89\xce" + call(WRAPPER + 3, INTERNAL),  # mov %rcx,%rsi: arguments changed
                                  b"\x48\x8d\x0c\x24" + call(WRAPPER + 4, INTERNAL)])  # lea (%rsp),%rcx: the same
def test_only_the_exact_wrapper_shape_is_followed(head):
    assert function_sites(fake({WRAPPER: head + b"\xc3"}), ["wrapper"]) == [Site("wrapper", WRAPPER + 0x1000)]


def test_a_call_outside_the_loaded_code_is_not_followed():
    far = b"\x48\x83\xec\x08" + call(WRAPPER + 4, 0x90000) + b"\xc3"
    assert function_sites(fake({WRAPPER: far}), ["wrapper"]) == [Site("wrapper", WRAPPER + 0x1000)]


def test_other_machines_are_probed_at_the_entry():
    elf = fake()
    elf.machine = 183  # aarch64
    assert function_sites(elf, ["wrapper", "caller"]) == [Site("wrapper", WRAPPER + 0x1000),
                                                        Site("caller", CALLER + 0x1000)]


@pytest.mark.skipif(not os.path.exists(LIBSSL), reason=f"no {LIBSSL}")
def test_this_host_s_libssl():
    """Every site is a function entry or the start of a push the kernel emulates."""
    elf = ElfFile(LIBSSL)
    names = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"]
    sites = function_sites(elf, names)
    covered = {name for s in sites for name in s.covers}
    assert {s.symbol for s in sites} | covered == set(names)
    for s in sites:
        if s.followed:
            with open(LIBSSL, "rb") as f:
                first = os.pread(f.fileno(), 2, s.offset)
            assert 0x50 <= first[0] <= 0x57 or first[0] == 0x41 and 0x50 <= first[1] <= 0x57
        else:
            assert s.offset == elf.offset(s.symbol)
