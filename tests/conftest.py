"""Shared test fixtures.

Kernel tests need root and a kernel with BPF. Without them they skip with a
one-line reason; they never fail with a traceback.
"""
import importlib.util
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _kernel_reason():
    if os.geteuid() != 0:
        return "needs root (BPF syscalls)"
    if not os.path.exists("/sys/fs/bpf") and not os.path.exists("/proc/sys/kernel/unprivileged_bpf_disabled"):
        return "kernel has no BPF"
    return None


KERNEL_SKIP_REASON = _kernel_reason()


def load_script(path, name):
    """The Python file at `path` (relative to the checkout: a tool, a harness) as a module named
    `name`: scripts outside the packages, which tests import to call their functions."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slow_factor():
    """How many times slower than a normal machine this one runs: $BPFHOOK_SLOW (vagrant/matrix.py
    sets it under qemu emulation), else 1. It scales the upper bounds of waits that end as soon as
    what they wait for happens, so it costs nothing where things work; never use it for a sleep."""
    try:
        return max(1.0, float(os.environ.get("BPFHOOK_SLOW", "1")))
    except ValueError:
        return 1.0


def eventually(check, timeout=5.0):
    """Poll check() until true or timeout (what the kernel does asynchronously: veth delivery,
    ARP, freeing programs after an RCU grace period); returns its last answer's truth."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def require(feature):
    """Skip the test, with a one-line reason, unless the running kernel has `feature` (a
    pybpf.features name): for tests of what only newer kernels do (the kernel matrix runs 6.1)."""
    from pybpf import features

    if not features.has(feature):
        pytest.skip(f"this kernel has no {feature}: {features.probe(feature).detail}")


def uses_cpu_v4(insns):
    """Whether instructions include cpu v4 ones (Linux 6.6): signed division, sign-extending
    moves and loads, unconditional byte swaps, gotol."""
    return any(i.op.cpu_v4 for i in insns)


def pytest_collection_modifyitems(config, items):
    """Everything under tests/kernel/ is a kernel test; so is anything marked so."""
    skip = pytest.mark.skip(reason=KERNEL_SKIP_REASON) if KERNEL_SKIP_REASON else None
    for item in items:
        if f"{os.sep}tests{os.sep}kernel{os.sep}" in str(item.fspath):
            item.add_marker(pytest.mark.kernel)
        if skip and "kernel" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: needs root and a BPF-capable kernel")


def pytest_terminal_summary(terminalreporter):
    """Name the oracle tools this machine lacks, and how many tests skipped for each: `-q` alone
    shows only a skip count."""
    from tests import oracles

    missing = oracles.missing()
    if not missing:
        return
    skipped = [str(r.longrepr[2]) for r in terminalreporter.stats.get("skipped", []) if isinstance(r.longrepr, tuple)]
    counts = {name: sum(problem in reason for reason in skipped) for name, problem in missing.items()}
    terminalreporter.write_line(
        "oracle tools missing here: " + ", ".join(
            f"{name} ({'too old, ' if 'too old' in missing[name] else ''}{counts[name]} skipped)" for name in missing)
        + f"; {oracles.INSTALL_HINT}")
