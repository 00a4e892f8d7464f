"""Moved to pybpf.asm.text (its command line to pybpf.cli); this name and `python -m pybpf.text` stay."""
from pybpf.asm.text import *  # noqa: F401,F403
from pybpf.cli import asm_main as main

if __name__ == "__main__":
    raise SystemExit(main())
