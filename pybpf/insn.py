"""Moved to pybpf.asm.insn; this name stays importable."""
from pybpf.asm.insn import *  # noqa: F401,F403
