"""pybpf: eBPF in pure Python.

Write programs with the DSL (pybpf.asm), assemble text (pybpf.asm.text), read bytecode
back (pybpf.asm.disasm): the pure half. Load, attach and read them through raw bpf()
syscalls (pybpf.syscall, pybpf.prog, pybpf.maps, pybpf.attach, pybpf.readers, ...).

Importing pybpf is cheap: submodules load on first use.
"""
import importlib

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily by __getattr__ below.
_LAZY = {
    "BpfError": "errors",
    "AssemblerError": "errors",
    "SyscallError": "errors",
    "VerifierError": "errors",
    "FeatureUnavailable": "errors",
    "Insn": "asm.insn",
    "assemble": "asm.text",
    "disassemble": "asm.disasm",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pybpf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pybpf.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
