"""tracefs where a fresh machine has none mounted: found or mounted by pybpf.tracefs.root(), for
what needs it (perf tracepoints, and bpftrace beside the monitor in the benchmark)."""
import os
import re
import socket
import subprocess
import time

import pytest

from pybpf import tracefs
from tests import oracles
from tests.conftest import load_script


@pytest.fixture
def no_tracefs():
    """Every tracefs mount taken away for the test (skipped where one is busy); the test
    mounts it back through tracefs.root()."""
    points = [point for point, fstype, _source in tracefs.mounts() if fstype == "tracefs"]
    for point in sorted(points, key=len, reverse=True):  # (an automount under a debugfs mount first)
        done = subprocess.run(["umount", point], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"tracefs at {point} cannot be unmounted: {done.stderr.strip()}")
    assert tracefs.find_mount("tracefs") is None
    yield
    tracefs.root()


def test_root_mounts_tracefs_where_none_is_mounted(no_tracefs):
    if tracefs.find_mount("debugfs") is not None:
        pytest.skip("debugfs is mounted: root() may find tracing inside it")
    assert tracefs.root() == tracefs.TRACEFS_DIR
    assert tracefs.find_mount("tracefs") == tracefs.TRACEFS_DIR
    assert os.path.exists(os.path.join(tracefs.TRACEFS_DIR, "events", "sock", "inet_sock_set_state", "format"))


def test_the_benchmark_starts_bpftrace_where_tracefs_was_not_mounted(no_tracefs):
    oracles.require("bpftrace")
    bench = load_script("tests/perf/bench_monitor.py", "bench_monitor")
    peer = bench._peer()
    p, _seconds = bench._start(peer.cmd, peer.marker)  # raised "did not report 'Attaching'" before
    time.sleep(bench.STARTED_SECONDS)  # (bpftrace stopped while attaching ignores SIGINT for 30 s)
    with socket.create_server(("127.0.0.1", 0)) as server:  # transitions for its one-liner to count
        socket.create_connection(server.getsockname()).close()
    out = bench._stop(p)
    assert re.search(r"^@\[\d+\]: [1-9]", out, re.M), out  # its map, printed at exit: it was attached
