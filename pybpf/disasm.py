"""Moved: the formatter to pybpf.asm.disasm, read_loaded to pybpf.prog, the command line to
pybpf.cli. This name and `python -m pybpf.disasm` stay."""
from pybpf.asm.disasm import *  # noqa: F401,F403
from pybpf.cli import disasm_main as main, parse_hex  # noqa: F401


def __getattr__(name):
    # The kernel side (cffi) loads only when asked for, so the command line starts without it.
    if name in ("Loaded", "read_loaded"):
        from pybpf import prog

        return getattr(prog, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
