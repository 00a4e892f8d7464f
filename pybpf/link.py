"""Moved to pybpf.asm.link; this name stays importable."""
from pybpf.asm.link import *  # noqa: F401,F403
