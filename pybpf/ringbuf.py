"""Moved to pybpf.readers.ringbuf; this name stays importable."""
from pybpf.readers.ringbuf import *  # noqa: F401,F403
