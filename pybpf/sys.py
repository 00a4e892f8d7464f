"""Old name of pybpf.syscall (a module named sys shadows the standard library's): kept importable."""
from pybpf.syscall import *  # noqa: F401,F403
