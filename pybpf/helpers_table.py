"""Moved to pybpf.asm.helpers_table; this name stays importable."""
from pybpf.asm.helpers_table import *  # noqa: F401,F403
