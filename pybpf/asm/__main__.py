"""python -m pybpf.asm: the text assembler's command line (pybpf-asm)."""
from pybpf.cli import asm_main

raise SystemExit(asm_main())
