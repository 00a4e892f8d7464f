"""Moved to pybpf.readers.perfbuf; this name stays importable."""
from pybpf.readers.perfbuf import *  # noqa: F401,F403
