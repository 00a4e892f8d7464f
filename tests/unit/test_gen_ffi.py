"""pybpf/_ffi.py is pybpf.syscall.CDEF pre-parsed: the two never drift, and importing pybpf.syscall parses nothing."""
import os
import subprocess
import sys

from tests.conftest import load_script

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gen_ffi():
    return load_script("tools/gen_ffi.py", "gen_ffi")


def test_regenerating_gives_the_committed_file():
    """Byte for byte, but for the header line naming the cffi version that generated it."""
    def without_version(text):
        return [line for line in text.splitlines() if not line.startswith("# cffi ")]

    with open(os.path.join(ROOT, "pybpf", "_ffi.py")) as f:
        committed = f.read()
    assert without_version(_gen_ffi().generate()) == without_version(committed), \
        "pybpf/_ffi.py is stale: run python3 tools/gen_ffi.py"


def test_import_uses_the_generated_ffi_without_pycparser():
    code = ("import sys, pybpf.syscall as s, pybpf._ffi as g; "
            "print(s.ffi is g.ffi, 'pycparser' in sys.modules, 'cffi' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "False"]


def test_generated_and_parsed_layouts_agree():
    import cffi

    from pybpf import syscall as bsys

    parsed = cffi.FFI()
    parsed.cdef(bsys.CDEF)
    for ctype in ("union bpf_attr", "struct perf_event_attr"):
        assert bsys.ffi.sizeof(ctype) == parsed.sizeof(ctype)
    for field in ("map_type", "max_entries", "map_extra", "insns", "log_buf", "prog_name"):
        assert bsys.ffi.offsetof("union bpf_attr", field) == parsed.offsetof("union bpf_attr", field)
