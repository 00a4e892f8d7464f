"""bpfhook: container-aware network tools built on pybpf.

The BPF programs live in the bpfhook.programs package. An installed wheel
carries them at bpfhook/programs/; a source checkout keeps them in the
top-level programs/ directory, and the finder below maps the name onto it
so `import bpfhook.programs.x` means the same file either way.
"""
import os
import sys

__version__ = "0.1.0"

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT_PROGRAMS = os.path.join(os.path.dirname(_HERE), "programs")


class _CheckoutProgramsFinder:
    """Resolves bpfhook.programs to <checkout>/programs; nothing else."""

    name = __name__ + ".programs"

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != cls.name:
            return None
        from importlib.util import spec_from_file_location

        return spec_from_file_location(
            fullname,
            os.path.join(_CHECKOUT_PROGRAMS, "__init__.py"),
            submodule_search_locations=[_CHECKOUT_PROGRAMS],
        )


def _in_checkout():
    installed = os.path.isdir(os.path.join(_HERE, "programs"))
    return not installed and os.path.isfile(os.path.join(_CHECKOUT_PROGRAMS, "__init__.py"))


# First in line: an editable install's finder may map the name to another checkout.
if _in_checkout() and _CheckoutProgramsFinder not in sys.meta_path:
    sys.meta_path.insert(0, _CheckoutProgramsFinder)
