"""Moved to pybpf.asm.text; this name (and `python -m pybpf.text`) stays."""
from pybpf.asm.text import *  # noqa: F401,F403

if __name__ == "__main__":
    main()  # noqa: F405
