"""The BPF programs of the tools, in the pybpf DSL; siblings import each other relatively."""
