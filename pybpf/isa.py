"""Moved to pybpf.asm.isa; this name stays importable."""
from pybpf.asm.isa import *  # noqa: F401,F403
