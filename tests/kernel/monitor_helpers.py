"""What the monitor's kernel tests share: the client and server they run, waits for events,
the hooks each kernel feature allows, and the command run as a subprocess."""
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

from bpfhook import cgroups
from pybpf import features
from pybpf.prog import LoadedProgram, iter_ids, prog_info
from tests.conftest import slow_factor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CGROUP_ROOT = cgroups.mount()
MONITOR_PROGRAMS = {"bh_conn_state", "bh_conn_destroy", "bh_accept", "bh_connect4", "bh_connect6"}
HEALTH_PROGRAMS = {"bh_retrans", "bh_rst_sent", "bh_rst_recv"}  # (programs/tcp_health.py)

# Server: listen on argv[1] (port 0), print the port, accept one connection, read SEND, reply RECV bytes.
SERVER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
recv, send = int(sys.argv[2]), int(sys.argv[3])
with socket.socket(family) as s:
    s.settimeout(30)  # the monitor's start-up under qemu emulation can take most of 10 s
    s.bind((sys.argv[1], 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    conn, _ = s.accept()
    with conn:
        got = 0
        while got < recv:
            got += len(conn.recv(recv - got))
        conn.sendall(b"s" * send)
        conn.recv(1)  # the client's FIN: the client closes first
"""


def host_server(address, recv, send):
    """A one-connection server thread on the host; returns (port, thread)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    srv = socket.socket(family)
    srv.settimeout(30)  # a container client's start under qemu emulation can take most of 10 s
    srv.bind((address, 0))
    srv.listen(1)

    def serve():
        with srv:
            conn, _ = srv.accept()
            with conn:
                got = 0
                while got < recv:
                    got += len(conn.recv(recv - got))
                conn.sendall(b"s" * send)
                with contextlib.suppress(ConnectionResetError):  # (a client that aborts)
                    conn.recv(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv.getsockname()[1], t


@contextlib.contextmanager
def loopback_connection():
    """An established loopback connection, accepted, for its lifetime: (server port, client port)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client, listener.accept()[0]:
            yield port, client.getsockname()[1]


def collect(monitor, until, timeout=5.0):
    """Events read until `until(events)` holds (or timeout)."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += monitor.read(0.1)
        if until(events):
            break
    return events


def closed(events, sport=None, dport=None):
    return [e for e in events if e["event"] == "close" and (sport is None or e["sport"] == sport)
            and (dport is None or e["dport"] == dport)]


# The feature each state hook needs (programs/conn_state.py HOOKS)
STATE_NEEDS = {"tp_btf": "tp_btf", "raw_tracepoint": "raw_tracepoint"}

# How the state note names each hook (Monitor._raw_tracepoint_attempts)
HOOK_WORDS = {"tp_btf": "tp_btf", "raw_tracepoint": "raw tracepoint"}

# The feature each accept hook needs (programs/accept.py HOOKS)
ACCEPT_NEEDS = {"fexit": "fexit", "kretprobe": "kprobe_pmu", "getpeername": "attach_type.cgroup_inet4_getpeername",
                "tracepoint": "perf_event_tracepoint"}


# How the start-up line names each (and the programs it attaches: two for a hook per syscall or
# per address family, else one)
ACCEPT_NOTE = {"fexit": "fexit inet_csk_accept", "kretprobe": "kretprobe inet_csk_accept",
               "getpeername": "cgroup getpeername4/getpeername6", "tracepoint": "tracepoints syscalls:sys_exit_accept4"}


def best_accept_hook():
    return next(hook for hook, need in ACCEPT_NEEDS.items() if features.has(need))


def spawn_monitor(*args):
    return subprocess.Popen([sys.executable, "-m", "bpfhook", "monitor", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_attached(p, timeout=60):
    """Reads the start-up lines; returns the one naming the accept hook. A monitor that has not
    said them all within `timeout` (scaled by slow_factor) is killed, which ends the reads."""
    watchdog = threading.Timer(timeout * slow_factor(), p.kill)
    watchdog.start()
    try:
        line = p.stderr.readline()
        assert "attached" in line, line + p.stderr.read()
        line = p.stderr.readline()
        assert "connection states through" in line, line + p.stderr.read()
        line = p.stderr.readline()
        assert "accepted connections through" in line, line + p.stderr.read()
    finally:
        watchdog.cancel()
    return line


def our_prog_ids(names=MONITOR_PROGRAMS | HEALTH_PROGRAMS):
    """Ids of loaded programs named like the monitor's (or one of `names`)."""
    ids = set()
    for prog_id in iter_ids():
        try:
            with LoadedProgram.from_id(prog_id) as prog:
                if prog_info(prog.fd).name in names:
                    ids.add(prog_id)
        except OSError:  # unloaded between the id walk and the open
            pass
    return ids
