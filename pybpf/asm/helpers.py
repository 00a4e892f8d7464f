"""BPF helper functions: ids, names, argument counts.

The table (helpers_table.py) is generated from uapi bpf.h; this module gives
it a shape: look a helper up by name ("map_lookup_elem" or
"bpf_map_lookup_elem") or by id, and know how many arguments it takes.
"""
from dataclasses import dataclass

from ..errors import AssemblerError
from .helpers_table import HELPERS


@dataclass(frozen=True)
class Helper:
    id: int
    name: str  # without the bpf_ prefix
    signature: str  # C prototype from bpf.h

    @property
    def nargs(self):
        params = self.signature[self.signature.index("(") + 1:-1].strip() if self.signature else ""
        return 0 if params in ("", "void") else params.count(",") + 1

    @property
    def returns_pointer(self):
        return self.signature.split("bpf_", 1)[0].rstrip().endswith("*")

    @property
    def c_name(self):
        return "bpf_" + self.name


BY_ID = {row[0]: Helper(*row) for row in HELPERS}
BY_NAME = {helper.name: helper for helper in BY_ID.values()}


def lookup(name_or_id):
    """The Helper for "map_lookup_elem", "bpf_map_lookup_elem" or 1."""
    if isinstance(name_or_id, int):
        helper = BY_ID.get(name_or_id)
    else:
        name = name_or_id[4:] if name_or_id.startswith("bpf_") else name_or_id
        helper = BY_NAME.get(name)
    if helper is None or helper.id == 0:
        raise AssemblerError(f"unknown BPF helper {name_or_id!r}")
    return helper


def name_of(helper_id):
    """Kernel-style name ("bpf_map_lookup_elem") or None for an unknown id."""
    helper = BY_ID.get(helper_id)
    return helper.c_name if helper and helper.id else None
