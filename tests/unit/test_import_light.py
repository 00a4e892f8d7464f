"""`import pybpf`, `import pybpf.cli` and `import bpfhook` stay cheap: no heavy dependency at import time."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAVY = ("pyroute2", "construct", "cffi")
BUDGET_MS = 50

# Time the import inside the interpreter, so process start-up noise stays out.
PROBE = """
import sys, time
t = time.perf_counter()
import {module}
ms = (time.perf_counter() - t) * 1000
print(ms, ",".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def _import_cost(module):
    """Best of 5 fresh interpreters: (milliseconds, heavy modules loaded)."""
    runs = []
    for _ in range(5):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(module=module, heavy=HEAVY)],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.split()
        runs.append((float(out[0]), out[1:]))
    return min(runs)


@pytest.mark.parametrize("module", ["pybpf", "pybpf.cli", "bpfhook", "bpfhook.cli"])
def test_import_is_light(module, capsys):
    ms, heavy = _import_cost(module)
    with capsys.disabled():  # the figure belongs in the CI log
        print(f"\nimport {module}: {ms:.1f} ms over bare python (budget {BUDGET_MS} ms)")
    assert heavy == [], f"import {module} pulled in {heavy}"
    assert ms < BUDGET_MS


@pytest.mark.parametrize("module,deferred", [
    ("pybpf.prog", "construct"), ("pybpf.features", "construct"), ("pybpf.btf", "construct"),
    ("pybpf.attach", "pyroute2"), ("pybpf.tc", "pyroute2"),
])
def test_kernel_side_defers_what_it_rarely_needs(module, deferred):
    """These load construct (the BTF writer) or pyroute2 (netlink fallbacks) only when a call needs it."""
    code = f"import sys, {module}; print({deferred!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "False"
