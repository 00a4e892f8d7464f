"""BPF programs written in the pybpf DSL.

Import them as `bpfhook.programs.<name>` (the wheel installs this directory
there); inside this package, import siblings relatively (`from . import x`).
"""
