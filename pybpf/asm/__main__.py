"""python -m pybpf.asm: the text assembler's command line (pybpf-asm)."""
from pybpf.asm.text import main

main()
