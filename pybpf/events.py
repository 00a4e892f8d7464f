"""Moved to pybpf.readers (open_reader) and pybpf.readers.base; this name stays importable."""
from pybpf.readers import open_reader  # noqa: F401
from pybpf.readers.base import *  # noqa: F401,F403
