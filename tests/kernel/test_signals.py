"""Two signals never cut a tool's clean-up short.

Each tool runs as a user runs it and gets SIGINT/SIGTERM twice: once through `timeout`, which
signals the tool and then its whole process group, and once as two signals 1 ms apart (a
double Ctrl-C, a supervisor's SIGTERM then SIGINT), at moments from start-up to steady state.
The kernel state (tc qdiscs and filters on every link, BPF programs, links and maps, pins,
named network namespaces, bpfhook's state files) must read the same before and after every run.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from bpfhook import pcapng
from bpfhook.lab import Lab, LabError
from tests import kernel_state
from tests.conftest import eventually, slow_factor
from tests.pcapfiles import udp, write

MAIN = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DELAYS = (0.2, 0.7, 1.5, 3.0)  # start-up (imports, set-up) to steady state
PAIRS = ((signal.SIGINT, signal.SIGINT), (signal.SIGTERM, signal.SIGINT))
REPLAY_GAP_MS = 400


def _replay_file(path, port):
    """A UDP flow of 15 datagrams REPLAY_GAP_MS apart: replayed at speed 1, it runs 6 s."""
    client, server = ("10.77.250.1", 40000), ("127.0.0.1", port)
    return write(path, [(i * REPLAY_GAP_MS, udp(client, server, b"d%d" % i)) for i in range(15)])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Lab containers for the tools to work on, a UDP sink for replay, and the argv per tool."""
    tag = f"s{os.getpid() % 10000}"
    names = {role: f"{tag}{role}" for role in ("src", "obs", "cap", "exe")}
    made = []
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for name in names.values():
            made.append(Lab.up(name))
        # a process in the captured container: capture --tls probes the TLS libraries it sees
        made[list(names).index("cap")].spawn(["sleep", "600"], stdout=subprocess.DEVNULL)
        sink.bind(("127.0.0.1", 0))
        tmp = tmp_path_factory.mktemp("signals")
        replay_file = _replay_file(tmp / "replay.pcapng", sink.getsockname()[1])
        yield {
            "monitor": lambda run: ["monitor", "-m", "0.3", "-s"],
            "monitor --json": lambda run: ["monitor", "--json"],
            "capture": lambda run: ["capture", "--container", names["cap"], "-w", str(tmp / f"{run}.pcapng")],
            "capture --tls": lambda run: ["capture", "--container", names["cap"], "--net", "--uds", "--tls",
                                          "-w", str(tmp / f"{run}.pcapng")],
            "mirror mirred": lambda run: ["mirror", "--from", names["src"], "--to", names["obs"],
                                          "--method", "mirred"],
            "mirror bpf": lambda run: ["mirror", "--from", names["src"], "--to", names["obs"], "--method", "bpf"],
            "lab exec": lambda run: ["lab", "exec", names["exe"], "--", "sleep", "30"],
            "replay": lambda run: ["replay", replay_file, "--to", f"127.0.0.1:{sink.getsockname()[1]}",
                                   "--speed", "1"],
            "demo mirror": lambda run: ["demo", "mirror", "--seconds", "2", "--max-lines", "0"],
            "tmp": tmp,
        }
    finally:
        sink.close()
        for c in made:
            try:
                c.down()
            except LabError:
                pass


TOOLS = ("monitor", "monitor --json", "capture", "capture --tls", "mirror mirred", "mirror bpf", "lab exec",
         "replay", "demo mirror")


def _signal_twice(proc, via_timeout, pair):
    if via_timeout:  # timeout forwards it to the tool, then to its own process group
        proc.send_signal(pair[0])
        return
    os.kill(proc.pid, pair[0])
    time.sleep(0.001)
    os.kill(proc.pid, pair[1])


_FRAME = re.compile(r'File "([^"]+)", line \d+, in (\S+)')


def _before_bpfhook_began(err):
    """A KeyboardInterrupt raised while Python itself was still starting (importing, every frame
    module level): before bpfhook could take the signal, and before it made anything. Under qemu
    emulation that start takes seconds."""
    frames = _FRAME.findall(err)
    return err.rstrip().endswith("KeyboardInterrupt") and all(name == "<module>" or path.startswith("<frozen")
                                                              for path, name in frames)


def _check_capture_file(path):
    """A capture stopped at any moment is a whole file (or none, stopped before it began)."""
    if not os.path.exists(path):
        return
    reader = pcapng.Reader(path)
    list(reader)
    assert reader.truncated == 0, f"{path}: torn tail of {reader.truncated} bytes"


@pytest.mark.parametrize("tool", TOOLS)
def test_two_signals_never_cut_the_clean_up_short(world, tool):
    runs = 0
    for via_timeout in (True, False):
        for delay, pair in zip(DELAYS, PAIRS * len(DELAYS)):
            runs += 1
            argv = [sys.executable, "-m", "bpfhook", *world[tool](runs)]
            if via_timeout:
                argv = ["timeout", "60", *argv]
            before = kernel_state.snapshot()
            proc = subprocess.Popen(argv, cwd=MAIN, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                # Moments in the tool's life: under emulation (the kernel matrix) it is that much slower
                time.sleep(delay * slow_factor())
                _signal_twice(proc, via_timeout, pair)
                _out, err = proc.communicate(timeout=60)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            where = f"{tool}, {'timeout' if via_timeout else 'two signals'} after {delay}s (exit {proc.returncode})"
            assert "Traceback" not in err or _before_bpfhook_began(err), f"{where}:\n{err}"
            # (the kernel frees a closed program after an RCU grace period: wait for that, not longer)
            eventually(lambda: kernel_state.snapshot() == before, timeout=10 * slow_factor())
            assert kernel_state.snapshot() == before, f"{where}: left behind\n{err}"
            if tool.startswith("capture"):
                _check_capture_file(world["tmp"] / f"{runs}.pcapng")
