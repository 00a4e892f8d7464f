"""The cookbook of docs/pybpf.md: each script in docs/examples/ run as a user runs it, as root."""
import os
import re
import runpy
import subprocess
import sys

import pytest

from pybpf import attach
from pybpf.prog import load
from tests.unit.test_pybpf_guide import code_lines

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "docs", "examples")

if os.geteuid() != 0:
    pytest.skip("needs root to load BPF programs", allow_module_level=True)


def run(script, *args, code=0):
    out = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=ROOT), cwd="/")
    assert out.returncode == code, out.stderr
    return out.stdout


def rows(text):
    return [line.split() for line in text.splitlines() if line.strip()]


def test_packet_counter():
    assert run("packet_counter.py").splitlines() == ["protocol 6: 3 packets", "protocol 17: 2 packets",
                                                     "protocol 1: 1 packets"]


def test_opens_per_pid():
    out = run("opens_per_pid.py", sys.executable, "-c",
              "import os; print(os.getpid(), flush=True)\nfor _ in range(200): open('/etc/hostname').close()")
    pid = next(row[0] for row in rows(out) if len(row) == 1)
    counts = {row[0]: int(row[1]) for row in rows(out)[1:]}
    assert counts[pid] >= 200


def test_exec_events_with_the_parent_pid():
    out = run("exec_events.py", "sh", "-c", "echo $$; exec /bin/true")
    shell = next(row[0] for row in rows(out) if len(row) == 1)  # the shell's own line, wherever it fell
    events = [row for row in rows(out) if len(row) == 3]
    assert [shell, "true"] in [[pid, comm] for pid, _, comm in events]  # exec keeps the shell's pid
    ppid = next(ppid for pid, ppid, comm in events if comm == "true")
    assert ppid != "0" and ppid != shell


def test_connect4_filter_refuses_one_port_in_its_cgroup_only():
    connect = "import socket, sys\ntry:\n socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)\n" \
              "except OSError as e:\n print(e.errno)"
    import errno
    refused = run("connect4_filter.py", "9", sys.executable, "-c", connect, "9")
    other = run("connect4_filter.py", "9", sys.executable, "-c", connect, "10")
    assert refused.split() == [str(errno.EPERM)] and other.split() == [str(errno.ECONNREFUSED)]
    assert not [d for d in os.listdir(attach.cgroup2_root()) if d.startswith("pybpf-example-")]  # removed


def test_uprobe_write_bytes():
    if not hasattr(attach, "uprobe"):
        example = runpy.run_path(os.path.join(EXAMPLES, "uprobe_write_bytes.py"))  # built, not run
        with example["totals"], load(example["p"]):  # the verifier takes it
            pass
        pytest.skip("pybpf.attach.uprobe is not on this branch yet (the TLS issue brings it)")
    out = run("uprobe_write_bytes.py", sys.executable, "-c",
              "import ctypes, os; libc = ctypes.CDLL('libc.so.6'); print(os.getpid(), flush=True)\n"
              "for _ in range(10): libc.write(1, b'x' * 100 + b'\\n', 101)")
    pid = next(row[0] for row in rows(out) if len(row) == 1)
    totals = {row[0]: int(row[1]) for row in rows(out) if len(row) == 2}
    assert totals[pid] >= 1010


def test_exit_records_from_a_ring_buffer():
    out = run("exit_records.py", "sh", "-c", "echo $$; exit 3")
    shell = next(row[0] for row in rows(out) if len(row) == 1)
    assert [shell, "3", "sh"] in rows(out)


def test_examples_are_short_and_compute_no_offsets():
    for name in sorted(os.listdir(EXAMPLES)):
        if name.endswith(".py"):
            assert code_lines(os.path.join(EXAMPLES, name)) <= 35, name
            with open(os.path.join(EXAMPLES, name)) as f:
                assert not re.search(r"\.(u8|u16|u32|u64|be16|be32)\[[1-9]", f.read()), f"{name}: a hand offset"
