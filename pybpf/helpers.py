"""Moved to pybpf.asm.helpers; this name stays importable."""
from pybpf.asm.helpers import *  # noqa: F401,F403
