"""The pure half of pybpf: the instruction table, instructions, the DSL, the text assembler and
the disassembler. Nothing here talks to the kernel.

`from pybpf.asm import Program` is the DSL's builder (pybpf.asm.dsl).
"""
import importlib

__all__ = ["Program", "Reg", "Mem", "Type", "FuncRef", "Ptr", "StackSlot", "Stack", "BinExpr", "Cond",
           "field_of", "TYPES", "MAX_STACK", "CPUS", "S32_MIN", "S32_MAX", "U32_MAX",
           "u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "be16", "be32", "be64",
           "FieldInfo", "field_info"]


def __getattr__(name):
    # The DSL loads on first use: the assembler, the disassembler and the loader do without it
    # (its import costs more than the instruction table's).
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(".dsl", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
