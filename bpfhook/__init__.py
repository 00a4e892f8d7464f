"""bpfhook: container-aware network tools built on pybpf; their BPF programs are in bpfhook.programs."""

__version__ = "0.1.0"
