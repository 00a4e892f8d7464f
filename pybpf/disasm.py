"""Moved to pybpf.asm.disasm; this name (and `python -m pybpf.disasm`) stays."""
from pybpf.asm.disasm import *  # noqa: F401,F403

if __name__ == "__main__":
    raise SystemExit(main())  # noqa: F405
