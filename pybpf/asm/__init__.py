"""The pure half of pybpf: the instruction table, instructions, the DSL, the text assembler and
the disassembler. Nothing here talks to the kernel.

`from pybpf.asm import Program` is the DSL's builder (pybpf.asm.dsl).
"""
from .dsl import *  # noqa: F401,F403
from .dsl import __all__  # noqa: F401
