"""The connection monitor end to end, on the real kernel, with lab containers.

Traffic goes between the host and lab containers (addresses inside netns the
test creates) or over loopback; every wait is bounded.
"""
import contextlib
import ctypes
import dataclasses
import io
import itertools
import json
import os
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from bpfhook import cgroups, netns, procfs
from bpfhook.monitor import Monitor
from bpfhook.monitor_cli import MonitorOptions, watch
from bpfhook.programs import accept
from bpfhook.programs.conn_common import CONN_SLOTS, SLOT_SIZE, KernelOffsets, Maps
from bpfhook.records import F_OWNER_FROM_ACCEPT, METRICS_FIELDS, SLOT_ENDED, TCP_STATE_IDS, direction
from bpfhook.trafficgen import Server, generate
from pybpf import features, sys as bpfsys
from pybpf.errors import FeatureUnavailable
from pybpf.prog import Program, iter_ids, prog_info
from tests.conftest import eventually, require, slow_factor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CGROUP_ROOT = cgroups.mount()
MONITOR_PROGRAMS = {"bh_conn_state", "bh_conn_destroy", "bh_accept", "bh_connect4", "bh_connect6"}
# Loaded after the start-up lines, held until the end: the live walk and the task walk
WALKS = {"bh_live_conns", "bh_task_netns"}

# Client: connect to argv[1]:argv[2], send SEND bytes, read RECV bytes, close; prints its pid first.
CLIENT = """
import os, socket, sys
print(os.getpid(), flush=True)
host, port, send, recv = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with socket.create_connection((host, port), timeout=10) as s:
    print(s.getsockname()[1], flush=True)
    s.sendall(b"c" * send)
    got = 0
    while got < recv:
        got += len(s.recv(recv - got))
"""

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


def of_sock(events, first):
    """The events of `first`'s socket from `first` on (a freed sock's address is soon reused)."""
    return [e for e in events if e["sock"] == first["sock"] and e["ts_ns"] >= first["ts_ns"]]


def closed(events, sport=None, dport=None):
    return [e for e in events if e["event"] == "close" and (sport is None or e["sport"] == sport)
            and (dport is None or e["dport"] == dport)]


# The feature each state hook needs (programs/conn_state.py HOOKS)
STATE_NEEDS = {"tp_btf": "tp_btf", "raw_tracepoint": "raw_tracepoint"}
# How the state note names each hook (Monitor._raw_tracepoint_attempts)
HOOK_WORDS = {"tp_btf": "tp_btf", "raw_tracepoint": "raw tracepoint"}


@pytest.fixture(params=list(STATE_NEEDS))
def monitor(request):
    """A Monitor with each state hook in turn (skipped where the kernel lacks it): the typed
    and the probe-read programs must report the same."""
    hook, need = request.param, STATE_NEEDS[request.param]
    if not features.has(need):
        pytest.skip(f"no {need} on this kernel: {features.probe(need).detail}")
    with Monitor(CGROUP_ROOT, state=hook) as m:
        assert m.state_hook == hook
        assert m.state_note.startswith(HOOK_WORDS[hook] + " inet_sock_set_state")
        yield m


def _outbound(monitor, c, server_addr, client_addr_family):
    port, t = host_server(server_addr, 1000, 77)
    client = c.spawn([sys.executable, "-c", CLIENT, server_addr, str(port), "1000", "77"],
                     stdout=subprocess.PIPE, text=True)
    pid = int(client.stdout.readline())
    sport = int(client.stdout.readline())
    client.wait(10)
    t.join(10)
    events = collect(monitor, lambda ev: closed(ev, sport=sport) and closed(ev, dport=sport))
    connect = [e for e in events if e["event"] == "connect" and e["pid"] == pid]
    assert connect, "no connect event from the container's client"
    connect = connect[0]
    assert (connect["cgroup_id"], connect["daddr"], connect["dport"]) == (c.cgroup_id, server_addr, port)
    assert connect["family"] == client_addr_family and connect["comm"].startswith("python")
    mine = of_sock(events, connect)
    states = [(e["oldstate"], e["newstate"]) for e in mine if e["newstate"]]
    assert states == [("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1"),
                      ("FIN_WAIT1", "FIN_WAIT2"), ("FIN_WAIT2", "CLOSE")]
    close = mine[-1]
    assert close["event"] == "close"
    assert (close["bytes_sent"], close["bytes_received"]) == (1000, 77)
    assert close["pid"] == pid and close["cgroup_id"] == c.cgroup_id
    assert 0 < close["duration_ns"] < 10e9
    # The server side ran on the host: its close carries the mirror image of the bytes.
    (server_close,) = closed(events, dport=sport)
    assert (server_close["bytes_sent"], server_close["bytes_received"]) == (77, 1000)
    assert server_close["netns"] != close["netns"]  # the container has its own network namespace
    return close


def test_outbound_from_a_container(monitor, lab):
    c = lab(ipv6=False)
    close = _outbound(monitor, c, c.host_ipv4, "ipv4")
    assert close["saddr"] == c.ipv4
    m = monitor.cgroup_metrics()[c.cgroup_id]
    assert (m["opened"], m["closed"], m["active"]) == (1, 1, 0)
    assert (m["bytes_sent"], m["bytes_received"]) == (1000, 77)
    assert monitor.netns_metrics()[close["netns"]]["opened"] == 1
    lost = monitor.lost()
    assert lost["events"] == 0 and lost["missed"] == 0  # misses: recursion_misses of the attached programs
    assert len(monitor.programs) >= 4  # state, accept (one or two), connect4, connect6


def test_trafficgen_counts_the_bytes_the_monitor_counts(monitor):
    """What README says of trafficgen's figures: its HTTP requests' bytes each way are the
    monitor's bytes of those connections (the client's closes; the server's mirror them)."""
    with Server("http") as server:
        port = int(server.target.rpartition(":")[2])
        summary = generate("http", server.target, requests=5)
    assert summary.errors == 0, summary.last_error
    events = collect(monitor, lambda ev: len(closed(ev, dport=port)) == 5 and len(closed(ev, sport=port)) == 5)
    clients, servers = closed(events, dport=port), closed(events, sport=port)
    assert len(clients) == len(servers) == 5 and all(e["pid"] == os.getpid() for e in clients)
    assert sum(e["bytes_sent"] for e in clients) == sum(e["bytes_received"] for e in servers) == summary.bytes_sent
    assert sum(e["bytes_received"] for e in clients) == sum(e["bytes_sent"] for e in servers) == summary.bytes_received


@pytest.mark.parametrize("slot", ["free", "taken"])
def test_cgroup_metrics_in_the_per_cpu_cache_or_the_hash_map_behind_it(monitor, lab, slot):
    """A close adds to its cgroup's entry in the per-CPU cache when the cgroup's slot there is
    free, and to the hash map when another key holds the slot (planted here on every CPU): the
    totals are the same either way, and the other key's counts are left as they were."""
    c = lab(ipv6=False)
    maps, index = monitor.maps, Maps.cache_index(c.cgroup_id)
    if Maps.cache_index(cgroups.cgroup_id(cgroups.of_pid())) == index:
        pytest.skip("the host's cgroup (the server end's) has the container cgroup's cache slot")
    stranger = c.cgroup_id + 1
    held = {"free": {"key": 0, "metrics": dict.fromkeys(METRICS_FIELDS, 0)},
            "taken": {"key": stranger, "metrics": dict(dict.fromkeys(METRICS_FIELDS, 0), closed=5, bytes_sent=7)}}
    per_cpu = maps.cache_cgroup.lookup(0)  # each CPU's whole cache (one element)
    for cache in per_cpu:
        cache[index] = held[slot]
    maps.cache_cgroup.update(0, per_cpu)
    close = _outbound(monitor, c, c.host_ipv4, "ipv4")
    in_hash = maps.metrics_cgroup.lookup({"cgroup_id": c.cgroup_id}) is not None
    assert in_hash == (slot == "taken")
    m = monitor.cgroup_metrics()
    assert [m[c.cgroup_id][k] for k in ("opened", "closed", "bytes_sent", "bytes_received")] == [1, 1, 1000, 77]
    if slot == "taken":
        ncpus = maps.cache_cgroup.ncpus
        assert [m[stranger][k] for k in ("closed", "bytes_sent")] == [5 * ncpus, 7 * ncpus]
    n = monitor.netns_metrics()[close["netns"]]
    assert [n[k] for k in ("opened", "closed", "bytes_sent", "bytes_received")] == [1, 1, 1000, 77]


def test_outbound_over_ipv6(monitor, lab):
    c = lab(ipv6=True)
    close = _outbound(monitor, c, c.host_ipv6, "ipv6")
    assert close["family"] == "ipv6" and close["saddr"] == c.ipv6


# The feature each accept hook needs (programs/accept.py HOOKS)
ACCEPT_NEEDS = {"fexit": "fexit", "kretprobe": "kprobe_pmu", "getpeername": "attach_type.cgroup_inet4_getpeername",
                "tracepoint": "perf_event_tracepoint"}


# How the start-up line names each (and the programs it attaches: two for a hook per syscall or
# per address family, else one)
ACCEPT_NOTE = {"fexit": "fexit inet_csk_accept", "kretprobe": "kretprobe inet_csk_accept",
               "getpeername": "cgroup getpeername4/getpeername6", "tracepoint": "tracepoints syscalls:sys_exit_accept4"}
ACCEPT_PROGRAMS = {"fexit": 1, "kretprobe": 1, "getpeername": 2, "tracepoint": 2}


def best_accept_hook():
    return next(hook for hook, need in ACCEPT_NEEDS.items() if features.has(need))


@pytest.fixture(params=list(ACCEPT_NEEDS))
def accept_monitor(request):
    """A Monitor with each accept hook in turn, skipped where the kernel lacks it."""
    hook, need = request.param, ACCEPT_NEEDS[request.param]
    if not features.has(need):
        pytest.skip(f"no {need} on this kernel: {features.probe(need).detail}")
    with Monitor(CGROUP_ROOT, accept=hook) as m:
        assert m.accept_hook == hook
        yield m


def test_auto_takes_the_best_accept_hook_and_says_so():
    with Monitor(CGROUP_ROOT) as m:
        assert m.accept_hook == best_accept_hook()
        assert m.accept_note.startswith(ACCEPT_NOTE[m.accept_hook])
        for better in list(ACCEPT_NEEDS)[:list(ACCEPT_NEEDS).index(m.accept_hook)]:
            assert f"{better}: " in m.accept_note  # why a better hook was passed over


@pytest.mark.parametrize("nargs", [4, 2])  # (sk, flags, err, kern) before 6.10, (sk, arg) since
def test_fexit_reads_the_return_value_after_the_arguments(nargs):
    kernel = dataclasses.replace(KernelOffsets.load(), funcs={"inet_csk_accept": (1, nargs)})
    with Maps() as maps:
        insns = accept.build_fexit(maps, kernel).link()
    ctx = [i for i in insns if i.op.name == "ldxdw" and i.src == 9]  # r9 holds ctx
    assert [(i.dst, i.off) for i in ctx[:1]] == [(6, 8 * nargs)]


def test_fexit_target_comes_from_this_kernels_btf():
    from pybpf.btf import Btf

    btf = Btf.vmlinux()
    func = btf.find("inet_csk_accept", "func")
    params = btf.type_by_id(func.type).params
    assert KernelOffsets.from_btf(btf).func("inet_csk_accept") == (func.id, len(params))
    assert params[0].name == "sk" and len(params) in (2, 4)


def test_unknown_accept_hook_is_refused():
    with pytest.raises(ValueError, match="kprobe"):
        Monitor(CGROUP_ROOT, accept="kprobe")
    with pytest.raises(ValueError, match="state hook 'fentry': expected auto or one of tp_btf, raw_tracepoint"):
        Monitor(CGROUP_ROOT, state="fentry")


def test_typed_state_program_reads_the_socket_without_helpers():
    """tp_btf hands the program a BTF-typed struct sock: plain loads (fault-safe, checked by the
    verifier) replace every bpf_probe_read_kernel of the raw tracepoint program."""
    from bpfhook.programs import conn_state
    from pybpf.helpers import name_of

    kernel = KernelOffsets.load()
    with Maps(stream=False) as maps:
        calls = {typed: {name_of(i.imm) for i in conn_state.build(maps, kernel, typed).link()
                         if i.op.name == "call" and i.src == 0}  # helpers (src 1: a subprogram)
                 for typed in (False, True)}
    assert "bpf_probe_read_kernel" in calls[False]
    assert "bpf_probe_read_kernel" not in calls[True] and "bpf_skc_to_tcp_sock" in calls[True]


def test_auto_takes_the_best_state_hook():
    with Monitor(CGROUP_ROOT) as m:
        assert m.state_hook == next(hook for hook, need in STATE_NEEDS.items() if features.has(need))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_inbound_is_attributed_to_the_accepting_process(accept_monitor, lab, family):
    monitor = accept_monitor
    c = lab(ipv6=family == "ipv6")
    server_addr, client_addr = (c.ipv4, c.host_ipv4) if family == "ipv4" else (c.ipv6, c.host_ipv6)
    server = c.spawn([sys.executable, "-c", SERVER, server_addr, "500", "300"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    with socket.create_connection((server_addr, port), timeout=10) as s:
        s.sendall(b"h" * 500)
        got = 0
        while got < 300:
            got += len(s.recv(300 - got))
    server.wait(10)
    events = collect(monitor, lambda ev: closed(ev, sport=port))
    accepts = [e for e in events if e["event"] == "accept" and e["sport"] == port]
    assert len(accepts) == 1, accepts
    a = accepts[0]
    assert (a["pid"], a["cgroup_id"], a["owner_from_accept"]) == (server.pid, c.cgroup_id, True)
    assert (a["family"], a["saddr"], a["daddr"]) == (family, server_addr, client_addr)
    # The handshake ran in softirq: the SYN_RECV record names nobody, not some random task.
    syn_recv = [e for e in events if e["sock"] == a["sock"] and e["newstate"] == "SYN_RECV"
                and e["ts_ns"] <= a["ts_ns"]][-1:]
    assert syn_recv and syn_recv[0]["pid"] == 0 and syn_recv[0]["cgroup_id"] == c.cgroup_id
    (close,) = closed(events, sport=port)
    assert close["sock"] == a["sock"]
    assert (close["pid"], close["cgroup_id"]) == (server.pid, c.cgroup_id)
    assert (close["bytes_sent"], close["bytes_received"]) == (300, 500)
    m = monitor.cgroup_metrics()[c.cgroup_id]
    assert (m["opened"], m["closed"], m["bytes_sent"], m["bytes_received"]) == (1, 1, 300, 500)


def test_getpeername_of_a_connected_client_changes_nothing():
    """The getpeername hooks run for getpeername() too: a connection that has its owner (here
    the connecting task, from SYN_SENT) keeps it, and is not marked accepted."""
    require("attach_type.cgroup_inet4_getpeername")
    port, t = host_server("127.0.0.1", 3, 2)
    with Monitor(CGROUP_ROOT, accept="getpeername") as monitor:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            sport = s.getsockname()[1]
            assert s.getpeername() == ("127.0.0.1", port)
            s.sendall(b"abc")
            assert s.recv(2) == b"ss"
        t.join(10)
        events = collect(monitor, lambda ev: closed(ev, sport=sport) and closed(ev, dport=sport))
    (client,) = closed(events, sport=sport)
    assert (client["pid"], client["owner_from_accept"]) == (os.getpid(), False)
    assert [e for e in events if e["event"] == "accept"] and not [
        e for e in events if e["event"] == "accept" and e["sock"] == client["sock"]]  # the server's, only


# SERVER with accept(fd, NULL, NULL) (through libc): no peer address asked, so no getpeername hook runs
# settimeout() left the socket non-blocking: wait for the connection, then accept it
NULL_ACCEPT_SERVER = SERVER.replace("conn, _ = s.accept()", """import ctypes, select
    select.select([s], [], [], 30)
    fd = ctypes.CDLL(None, use_errno=True).accept(s.fileno(), None, None)
    assert fd >= 0, ctypes.get_errno()
    conn = socket.socket(fileno=fd)""")


def test_accept_without_peer_address_takes_the_closing_task(lab):
    """Under the getpeername hook an accept() that asks for no address is not seen: the
    connection's owner is the task that closes it (process context), not nobody."""
    require("attach_type.cgroup_inet4_getpeername")
    c = lab(ipv6=False)
    with Monitor(CGROUP_ROOT, accept="getpeername") as monitor:
        server = c.spawn([sys.executable, "-c", NULL_ACCEPT_SERVER, c.ipv4, "5", "3"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"h" * 5)
            assert s.recv(3) == b"sss"
        assert server.wait(10) == 0, server.stderr.read()
        events = collect(monitor, lambda ev: closed(ev, sport=port))
    assert not [e for e in events if e["event"] == "accept" and e["sport"] == port]
    (close,) = closed(events, sport=port)
    assert (close["pid"], close["cgroup_id"], close["owner_from_close"]) == (server.pid, c.cgroup_id, True)
    assert not close["owner_from_accept"] and close["comm"].startswith("python")


def test_host_loopback_traffic_and_udp(monitor):
    me = cgroups.cgroup_id(cgroups.of_pid())
    port, t = host_server("127.0.0.1", 10, 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        sport = s.getsockname()[1]
        s.sendall(b"x" * 10)
        s.recv(20)
    t.join(10)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.connect(("127.0.0.1", 9))
        usport = u.getsockname()[1]
    events = collect(monitor, lambda ev: closed(ev, sport=sport) and any(e["event"] == "udp" for e in ev))
    (close,) = closed(events, sport=sport)
    assert (close["pid"], close["cgroup_id"], close["bytes_sent"]) == (os.getpid(), me, 10)
    udp = [e for e in events if e["event"] == "udp" and e["pid"] == os.getpid()]
    assert udp and udp[0]["protocol"] == "udp" and udp[0]["dport"] == 9 and usport
    assert monitor.cgroup_metrics()[me]["udp"] >= 1


def test_without_streaming_the_maps_hold_what_the_report_needs():
    """stream=False: nothing reaches read(); live connections, the latest closes, transitions and
    durations come from the maps."""
    with Monitor(CGROUP_ROOT, stream=False) as m:
        port, t = host_server("127.0.0.1", 10, 20)
        with socket.create_connection(("127.0.0.1", port)) as live:
            sport = live.getsockname()[1]
            deadline = time.monotonic() + 5
            mine = []
            while not mine and time.monotonic() < deadline:
                mine = [c for c in m.connections() if c["sport"] == sport and c["state"] == "ESTABLISHED"]
            assert mine and mine[0]["pid"] == os.getpid() and mine[0]["dport"] == port
            assert (mine[0]["event"], mine[0]["passive"]) == ("connect", False)
            accepted = []
            while not accepted and time.monotonic() < deadline:  # the server side, once its thread accepted
                accepted = [c for c in m.connections() if (c["sport"], c["dport"]) == (port, sport)
                            and c["owner_from_accept"]]
            assert accepted and accepted[0]["pid"] == os.getpid() and accepted[0]["tid"] == t.native_id
            assert (accepted[0]["event"], accepted[0]["passive"]) == ("accept", True)
            me = m.cgroup_metrics()[cgroups.cgroup_id(cgroups.of_pid())]
            assert me["active"] >= 2 and me["opened"] == me["closed"] + me["active"]  # both ends are live
            live.sendall(b"x" * 10)
            live.recv(20)
        t.join(10)
        deadline, close = time.monotonic() + 5, []
        while not close and time.monotonic() < deadline:
            close = [e for e in m.recent() if e["event"] == "close" and e["sport"] == sport]
        assert close and (close[0]["pid"], close[0]["bytes_sent"], close[0]["bytes_received"]) == (os.getpid(), 10, 20)
        # The ended connection's entry stays for the next socket at its address, listed as live no more
        entry = m.maps.entry(close[0]["sock"])
        assert entry and entry[0].state == TCP_STATE_IDS["CLOSE"] and entry[1]
        assert not [c for c in m.connections() if c["sock"] == close[0]["sock"]]
        stats = m.stats()
        assert stats["transitions"][("CLOSE", "SYN_SENT")] >= 1 and stats["transitions"][("SYN_SENT", "ESTABLISHED")] >= 1
        assert stats["events"] >= 5 and stats["duration_max_ns"] >= close[0]["duration_ns"] > 0
        assert m.read(0) == [] and m.lost()["events"] == 0


@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
def test_live_connections_count_their_bytes_so_far(lab, slots):
    """refresh_live (a walk of every network namespace's TCP sockets) brings a live
    connection's bytes into its entry and its cgroup's metrics; once it ends they are counted
    once, from the close. The peer's FIN, which tcp_sock counts, is no byte."""
    c = lab(ipv6=False)
    with Monitor(CGROUP_ROOT, stream=False, slots=slots) as m:
        server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "500", "300"], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"h" * 500)
            got = 0
            while got < 300:
                got += len(s.recv(300 - got))
            sport = s.getsockname()[1]
            assert m.refresh_live()
            live = {(x["sport"], x["dport"]): x for x in m.connections()}
            inside, outside = live[(port, sport)], live[(sport, port)]  # (the server's end: in the lab's netns)
            assert (inside["bytes_received"], inside["bytes_sent"]) == (500, 300)
            assert (outside["bytes_sent"], outside["bytes_received"]) == (500, 300)
            metrics = m.cgroup_metrics()[c.cgroup_id]
            assert (metrics["active"], metrics["closed"], metrics["bytes_sent"], metrics["bytes_received"]) == (1, 0, 300, 500)
        server.wait(10)
        assert eventually(lambda: m.cgroup_metrics()[c.cgroup_id]["closed"] == 1)
        m.refresh_live()
        metrics = m.cgroup_metrics()[c.cgroup_id]
        assert (metrics["active"], metrics["bytes_sent"], metrics["bytes_received"]) == (0, 300, 500)

        with socket.create_server(("127.0.0.1", 0)) as listener:  # a server end left in CLOSE_WAIT
            with socket.create_connection(listener.getsockname()) as client:
                held, _ = listener.accept()
                with held:
                    client.sendall(b"x" * 10)
                    client.shutdown(socket.SHUT_WR)
                    sock_port = client.getsockname()[1]

                    def held_end():
                        m.refresh_live()
                        return [x for x in m.connections() if x["dport"] == sock_port and x["state"] == "CLOSE_WAIT"]
                    assert eventually(held_end)
                    assert held_end()[0]["bytes_received"] == 10


@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
def test_a_connection_whose_close_was_skipped_is_listed_no_more_after_two_walks(lab, slots):
    """A close the kernel skipped leaves a live entry for a socket that is gone. Planted, at
    made-up addresses (no socket there) with a lab server end's entry: one in the lab's
    namespace (in a slot, or in conns) and one in the host's. The live walk meets neither:
    after two walks they are listed no more, nor counted active, but closed, with the bytes
    they had: opened and bytes do not go back, and a third walk counts nothing again. Listed
    still: the live connection itself, an entry of a namespace the walk cannot enter, and one
    that started after the walks did."""
    c = lab(ipv6=False)
    old = time.monotonic_ns() - 10**10
    with Monitor(CGROUP_ROOT, stream=False, slots=slots) as m:
        server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "2", "0"], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"x")  # (the server waits for a second byte)
            in_lab = lambda: [x for x in m.connections() if x["sport"] == port]  # noqa: E731
            assert eventually(in_lab)
            (held,) = in_lab()
            slot_taken = lambda a: slots is None and m.maps.conn_slots.lookup(m.maps.slot_index(a)).sock  # noqa: E731
            free = (a for a in itertools.count(0x1000, 0x40) if m.maps.entry(a) is None and not slot_taken(a))
            planted = {"lab": (held["netns"], old), "host": (netns.cookie(), old), "elsewhere": (2**63 + 5, old),
                       "new": (netns.cookie(), time.monotonic_ns())}
            planted = {name: (next(free), cookie, start) for name, (cookie, start) in planted.items()}
            for i, (name, (sock, cookie, start)) in enumerate(planted.items()):
                conn = dict(m.maps.entry(held["sock"])[0], netns=cookie, start_ns=start, bytes_sent=1000 * (i + 1),
                            bytes_received=7 * (i + 1))
                if name == "lab" and slots is None:
                    m.maps.conn_slots.update(m.maps.slot_index(sock), {"sock": sock, "conn": conn})
                else:
                    m.maps.conns.update({"sock": sock}, conn)
            listed = lambda: {x["sock"] for x in m.connections()}  # noqa: E731
            everyone = {held["sock"]} | {sock for sock, _, _ in planted.values()}
            counts = lambda: {k: m.cgroup_metrics()[c.cgroup_id][k]  # noqa: E731
                              for k in ("opened", "closed", "active", "bytes_sent", "bytes_received")}
            assert m.refresh_live() and listed() >= everyone  # one walk: it may have skipped a live one
            first = counts()
            assert (first["active"], first["closed"], first["opened"]) == (1 + 4, 0, 5)
            assert m.refresh_live() and listed() & everyone == everyone - {planted["lab"][0], planted["host"][0]}
            assert counts() == dict(first, active=1 + 2, closed=2)
            (live,) = [x for x in m.connections() if x["sock"] == held["sock"]]
            lab_netns = m.netns_metrics()[held["netns"]]  # the live connection and the lab's planted one
            assert (lab_netns["closed"], lab_netns["active"], lab_netns["bytes_received"]) == (1, 1, 7 + 1)
            assert live["bytes_received"] == 1  # (the "x")
            assert m.refresh_live() and counts() == dict(first, active=3, closed=2)
            assert m.stats()["closed_unseen"] == 2
            s.sendall(b"x")
        server.wait(10)


def test_the_task_walk_finds_the_namespaces_a_proc_scan_finds_and_threads_ones(lab):
    """The socket walks run in every network namespace in use, found by a walk of the kernel's
    tasks (one read, where /proc costs a stat() per process): those a /proc scan finds, the
    lab's too, and one that only a thread of ours is in (setns and unshare are per thread),
    which the scan does not see; each with a path that enters it."""
    c = lab(ipv6=False)
    inside, leave = threading.Event(), threading.Event()
    thread_ns = {}

    def in_a_namespace_of_its_own():
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(netns.CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
        thread_ns["ino"] = netns.own()
        inside.set()
        leave.wait(30)  # (the thread's end frees the namespace)
    holder = threading.Thread(target=in_a_namespace_of_its_own)
    holder.start()
    try:
        assert inside.wait(10)
        with Monitor(CGROUP_ROOT, stream=False, older=False) as m:
            assert eventually(lambda: m._namespaces().keys() >= netns.host_namespaces().keys())
            assert m._task_walk is not None
            found = m._namespaces()
            assert os.stat(f"/run/netns/{c.netns}").st_ino in found
            assert thread_ns["ino"] in found and thread_ns["ino"] not in netns.host_namespaces()
            for ino, path in found.items():
                with netns.entered(path):
                    assert netns.own() == ino
    finally:
        leave.set()
        holder.join(10)


# A monitor in a pid namespace of its own, with its own /proc: the task walk's pids are not
# the ones it sees. Prints what it found, as JSON.
IN_PID_NAMESPACE = """
import json, sys
from bpfhook.monitor import Monitor
with Monitor(sys.argv[1], stream=False) as m:  # (older connections entered: a walk of every netns)
    namespaces = m._namespaces()
    m.refresh_live()
    m.refresh_live()
    print(json.dumps({"task_walk": m._task_walk is not None, "refused": m._task_walk_failed,
                      "namespaces": sorted(namespaces), "connections": m.connections()}))
"""


def test_a_monitor_in_a_pid_namespace_of_its_own_finds_namespaces_in_its_proc(lab):
    """Where /proc shows another pid namespace than the kernel's, the task walk is not used
    (its pids would name other processes there): the scan of /proc finds the namespaces,
    pinned ones included. So the walks meet a lab container's connection, open before the
    monitor: entered at start, its bytes so far, and still listed after two walks."""
    c = lab(ipv6=False)
    server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "5", "0"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    with socket.create_connection((c.ipv4, port), timeout=10) as s:
        s.sendall(b"x" * 5)
        time.sleep(0.2)  # (in flight no more)
        run = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", IN_PID_NAMESPACE,
                              CGROUP_ROOT], cwd=ROOT, capture_output=True, text=True, timeout=60 * slow_factor())
    server.wait(10)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert (found["task_walk"], found["refused"]) == (False, True)
    assert os.stat(f"/run/netns/{c.netns}").st_ino in found["namespaces"]
    inside = [x for x in found["connections"] if x["sport"] == port]
    assert [x["bytes_received"] for x in inside] == [5]


def test_a_kernel_without_the_live_bytes_walk_says_so_once_and_counts_bytes_at_the_close(monkeypatch):
    with Monitor(CGROUP_ROOT, stream=False, older=False) as m:
        tries = []

        def refused():
            tries.append(1)
            raise FeatureUnavailable("no bpf_iter_tcp here")
        monkeypatch.setattr(m, "_live_walk_link", refused)
        assert m.refresh_live() is False and m.refresh_live() is False
        said = [note for note in m.notes if note.startswith("live connections")]
        assert len(tries) == 1 and said == ["live connections count their bytes at their close only: "
                                            "no bpf_iter_tcp here"]


def test_a_connection_nobody_accepted_yet_is_listed_as_inbound():
    """The listener's child is followed from SYN_RECV: before accept() (and so with no owner)
    it is listed as the passive side, the client's socket as the active one."""
    with Monitor(CGROUP_ROOT, stream=False) as m, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            sport = client.getsockname()[1]

            def ends():
                live = m.connections()
                return ([c for c in live if (c["sport"], c["dport"]) == (port, sport)],
                        [c for c in live if (c["sport"], c["dport"]) == (sport, port)])
            assert eventually(lambda: all(ends()))
            (child,), (active,) = ends()
            assert (child["event"], child["passive"], child["pid"], child["state"]) == ("accept", True, 0, "ESTABLISHED")
            assert (active["event"], active["passive"], active["pid"]) == ("connect", False, os.getpid())


# Client in a container: connect to argv[1]:argv[2], print the source port, hold the connection
# until stdin closes, then close it.
HOLDING_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    print(s.getsockname()[1], flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
def test_connections_open_before_the_start_are_listed_and_end_cleanly(lab, slots):
    """Connections older than the monitor (a TCP socket iterator enters them at start) are live
    with their cgroup and netns, and the owner /proc shows holding each (the kernel knows none);
    the server's ends are passive (one still waiting in the accept queue, held by nobody, one
    accepted: its port is the listener's), the clients' are not; accept() then hands the waiting
    one over, a getpeername() on the accepted one takes nothing, and closes are counted, none
    lost."""
    c = lab(ipv6=False)
    with socket.socket() as listener:
        listener.bind((c.host_ipv4, 0))
        listener.listen(4)
        port = listener.getsockname()[1]
        clients = [c.spawn([sys.executable, "-c", HOLDING_CLIENT, c.host_ipv4, str(port)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            sports = [int(p.stdout.readline()) for p in clients]
            served, _ = listener.accept()  # one accepted before the start, one still waiting
            with served, Monitor(CGROUP_ROOT, stream=False, slots=slots) as m:
                assert m.older is not None and m.older >= 4, m.notes
                live = m.connections()
                ends = {sport: [x for x in live if sport in (x["sport"], x["dport"])] for sport in sports}
                for sport, client in zip(sports, clients):
                    (client_end,) = [x for x in ends[sport] if x["sport"] == sport]
                    assert (client_end["older"], client_end["passive"]) == (True, False)
                    assert (client_end["pid"], client_end["owner_from_proc"]) == (client.pid, True)
                    assert client_end["comm"] == procfs.comm(client.pid) and m.maps.entry(client_end["sock"])[0].pid == 0
                    assert (client_end["cgroup_id"], client_end["state"], client_end["saddr"]) == (
                        c.cgroup_id, "ESTABLISHED", c.ipv4)
                    (server_end,) = [x for x in ends[sport] if x["dport"] == sport]
                    assert server_end["netns"] != client_end["netns"] and server_end["older"]
                server_ends = [x for x in live if x["sport"] == port and x["older"]]
                assert len(server_ends) == 2 and all(x["passive"] for x in server_ends)
                (waiting,) = [x for x in server_ends if not x["accepted_before"]]  # not accepted yet
                assert (waiting["pid"], waiting["owner_from_proc"]) == (0, False)  # no process holds it
                (accepted,) = [x for x in live if (x["sport"], x["dport"]) == (port, served.getpeername()[1])]
                assert (accepted["pid"], accepted["owner_from_proc"]) == (os.getpid(), True)
                assert accepted["accepted_before"] and m.maps.entry(accepted["sock"])[0].pid == 0  # no accept
                pending, _ = listener.accept()
                with pending:
                    entry = m.maps.entry(waiting["sock"])
                    assert entry and entry[0].pid == os.getpid() and entry[0].flags & F_OWNER_FROM_ACCEPT
                for p in clients:  # the container's two ends close when their stdin does
                    p.stdin.close()
                    p.wait(10)
                assert eventually(lambda: m.cgroup_metrics().get(c.cgroup_id, {}).get("closed") == 2)
                assert m.lost()["conns"] == 0
                assert not [x for x in m.connections() if x["cgroup_id"] == c.cgroup_id]
        finally:
            for p in clients:
                p.kill()
                p.wait()


def test_a_connection_lives_in_its_slot_and_ends_there():
    """Both ends are found in the slot user space computes for their address (the program's
    hash and ours agree), not in conns; closed, the slot is marked ended."""
    require("atomics")
    with Monitor(CGROUP_ROOT, stream=False) as m:
        assert m.maps.slots == CONN_SLOTS
        port, t = host_server("127.0.0.1", 1, 1)
        with socket.create_connection(("127.0.0.1", port)) as s:
            sport = s.getsockname()[1]
            ends = lambda: [c for c in m.connections() if {c["sport"], c["dport"]} == {port, sport}]  # noqa: E731
            assert eventually(lambda: len(ends()) == 2)
            socks = [c["sock"] for c in ends()]
            for sock in socks:
                assert m.maps.conns.lookup({"sock": sock}) is None
                conn, ended = m.maps.entry(sock)
                assert not ended and conn.state == TCP_STATE_IDS["ESTABLISHED"]
            s.sendall(b"x")
            s.recv(1)
        t.join(10)
        assert eventually(lambda: all(m.maps.entry(sock)[1] for sock in socks))
        assert not ends() and m.closed_kept() == 0  # nothing was left in conns


def _in_slot(m, sock):
    """True when the socket's entry (it has one), live or ended, is in its slot: not in conns."""
    return m.maps.conns.lookup({"sock": sock}) is None


def _rewrite(m, sock, **fields):
    """The socket's entry, live again if it ended, with `fields` changed: as a run the kernel
    skipped leaves it."""
    conn = dict(m.maps.entry(sock)[0], **fields)
    if _in_slot(m, sock):
        m.maps.conn_slots.update(m.maps.slot_index(sock), {"sock": sock, "conn": conn})
    else:
        m.maps.conns.update({"sock": sock}, conn)


def _forget(m, sock):
    """The socket's entry removed, as when the kernel skipped its opening's runs."""
    if _in_slot(m, sock):
        m.maps.conn_slots.update(m.maps.slot_index(sock), bytes(m.maps.conn_slots.value_size))
    else:
        m.maps.conns.delete({"sock": sock})
    assert m.maps.entry(sock) is None


@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
@pytest.mark.parametrize("hook", list(STATE_NEEDS))
def test_after_a_skipped_transition_the_next_one_still_reads_the_final_ports(hook, slots):
    """A client whose SYN_SENT -> ESTABLISHED run the kernel skipped (planted: its entry still in
    SYN_SENT, with connect()'s source port 0) gets its ports at its next transition: the program
    asks the entry, not the tracepoint's oldstate, whether the handshake was behind it."""
    require(STATE_NEEDS[hook])
    with Monitor(CGROUP_ROOT, stream=False, state=hook, slots=slots) as m, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client, listener.accept()[0]:
            sport = client.getsockname()[1]
            mine = lambda: [c for c in m.connections() if (c["sport"], c["dport"]) == (sport, port)]  # noqa: E731
            assert eventually(lambda: len(mine()) == 1)
            sock = mine()[0]["sock"]
            _rewrite(m, sock, state=TCP_STATE_IDS["SYN_SENT"], sport=0)
            assert m.maps.entry(sock)[0].sport == 0
            client.shutdown(socket.SHUT_WR)
            conn, _ended = m.maps.entry(sock)  # (FIN_WAIT2 once the peer's ACK is in)
            assert conn.state in (TCP_STATE_IDS["FIN_WAIT1"], TCP_STATE_IDS["FIN_WAIT2"]) and conn.sport == sport


@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
@pytest.mark.parametrize("hook", list(STATE_NEEDS))
def test_a_connection_whose_opening_was_skipped_is_followed_from_its_next_transition(hook, slots):
    """Both ends' entries removed (as when the kernel skips a passive opening's two runs, which
    one softirq makes back to back): each is found again at its next transition, flagged
    found_late, direction unknown; the client's FIN_WAIT1 (process context) gives it its
    closer as owner, the server's CLOSE_WAIT (the peer's FIN) none until it closes itself;
    both closes are counted, none lost. Streamed, the transitions that found them say so."""
    require(STATE_NEEDS[hook])
    with Monitor(CGROUP_ROOT, stream=True, state=hook, slots=slots) as m, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        sport = client.getsockname()[1]
        ends = lambda: [c for c in m.connections() if {c["sport"], c["dport"]} == {port, sport}]  # noqa: E731
        assert eventually(lambda: len(ends()) == 2)
        socks = {c["sport"]: c["sock"] for c in ends()}
        for sock in socks.values():
            _forget(m, sock)
        client.shutdown(socket.SHUT_WR)
        by_port = lambda: {c["sport"]: c for c in ends()}  # noqa: E731
        assert eventually(lambda: len(by_port()) == 2)
        found = by_port()
        assert (found[sport]["state"] in ("FIN_WAIT1", "FIN_WAIT2"), found[port]["state"]) == (True, "CLOSE_WAIT")
        assert all(c["found_late"] and not c["older"] and direction(c) is None for c in found.values())
        assert (found[sport]["pid"], found[sport]["owner_from_close"]) == (os.getpid(), True)
        assert (found[sport]["dport"], found[port]["dport"], found[port]["pid"]) == (port, sport, 0)
        server.close()
        client.close()
        assert eventually(lambda: not ends())
        events = collect(m, lambda ev: len(closed(ev, sport=sport)) == 1 and len(closed(ev, sport=port)) == 1)
        late = [e for e in events if e["found_late"] and e["sock"] in socks.values()]
        assert {(e["sport"], e["newstate"]) for e in late} >= {(sport, "FIN_WAIT1"), (port, "CLOSE_WAIT")}
        (server_close,) = closed(events, sport=port)
        assert server_close["pid"] == os.getpid() and server_close["owner_from_close"]
        assert m.lost()["conns"] == 0


@contextlib.contextmanager
def _listen_addresses():
    """A map whose slot 0 holds the struct sock address of the last socket this process put in
    LISTEN, as inet_sock_set_state gives it (the monitor keys its entries by that address)."""
    from pybpf import attach
    from pybpf.asm import Program as Dsl
    from pybpf.maps import Map
    from pybpf.prog import load

    with Map("array", key=4, value=8, max_entries=1, name="listen_sk") as seen:
        p = Dsl("listen_sk", prog_type="raw_tracepoint")
        p.r6 = p.r1  # args: sk, oldstate, newstate
        p.call("get_current_pid_tgid")
        p.r0 >>= 32
        with p.If(p.r0 == os.getpid()):
            p.r7 = p.r6.u64[16]
            with p.If(p.r7 == TCP_STATE_IDS["LISTEN"]):
                key = p.stack.alloc(4)
                key.u32[0] = 0
                p.call("map_lookup_elem", seen, key)
                with p.If(p.r0 != 0):
                    p.r1 = p.r6.u64[0]
                    p.r0.u64[0] = p.r1
        p.exit(0)
        with load(p) as prog, attach.raw_tracepoint(prog, "inet_sock_set_state"):
            yield seen


def _plant(m, sock, conn):
    """An entry for `sock` where the programs look for it: its slot when that slot is free, else conns."""
    slot = m.maps.slot_index(sock) if m.maps.slots else None
    if slot is not None and not m.maps.conn_slots.mmap(writable=False)[slot * SLOT_SIZE:][:8].cast("Q")[0]:
        m.maps.conn_slots.update(m.maps.slot_index(sock), {"sock": sock, "conn": conn})
    else:
        m.maps.conns.update({"sock": sock}, conn)


@pytest.mark.parametrize("stream", [False, True], ids=["report", "stream"])
@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
@pytest.mark.parametrize("new_life", ["connect", "listen"])
def test_a_socket_starting_over_at_a_live_entrys_address_ends_that_entry(new_life, slots, stream):
    """A live entry at the address of a socket that starts over from CLOSE (connect(), listen())
    can only be one whose close the kernel skipped: it is ended first, and counted closed in
    its cgroup with the bytes it had (no duration: closed_unseen). Planted without relying on
    the slab: a socket whose connect() was refused (its entry ended, at its own address) is set
    back to live with a stranger's pid, cgroup and bytes, and connects again (a new connection
    there, ours); or the same stranger's entry is planted at the address of a listener that was
    shut down (LISTEN -> CLOSE), which then listens again (no connection there). (A socket that
    ever connected cannot listen on Linux 6.18: listen() gives EINVAL.) Streaming, the stale
    entry's close is sent then, marked close_unseen, before the new socket's first event."""
    with contextlib.ExitStack() as stack:
        seen = stack.enter_context(_listen_addresses()) if new_life == "listen" else None
        m = stack.enter_context(Monitor(CGROUP_ROOT, stream=stream, slots=slots))
        s, listener = (stack.enter_context(socket.socket()) for _ in range(2))
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.socket() as gone:
            gone.bind(("127.0.0.1", 0))
            refused = gone.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            s.connect(("127.0.0.1", refused))
        ended = [sock & ~SLOT_ENDED for sock, c in m.maps.slot_entries(ended=True) if c.dport == refused]
        ended += [k.sock for k, c in m.maps.conns.items() if c.dport == refused]
        (sock,) = ended
        planted, ended = m.maps.entry(sock)
        assert ended
        stranger = 2**62 + 17  # a cgroup id no one has
        stale = dict(planted, state=TCP_STATE_IDS["ESTABLISHED"], pid=999999, cgroup_id=stranger,
                     bytes_sent=1234, bytes_received=56)
        if new_life == "listen":
            again = stack.enter_context(socket.socket())
            again.bind(("127.0.0.1", 0))
            again.listen(1)
            sock = seen[0]
            assert sock and m.maps.entry(sock) is None  # a listener has no entry
            again.shutdown(socket.SHUT_RD)  # LISTEN -> CLOSE: the socket lives on, unconnected
            _plant(m, sock, stale)
        else:
            _rewrite(m, sock, **stale)
        assert [c["pid"] for c in m.connections() if c["sock"] == sock] == [999999]
        assert m.cgroup_metrics()[stranger]["active"] == 1 and m.stats()["closed_unseen"] == 0
        if new_life == "connect":
            s.connect(listener.getsockname())
            (again,) = [c for c in m.connections() if c["sock"] == sock]
            assert (again["pid"], again["dport"], again["state"]) == (os.getpid(), listener.getsockname()[1],
                                                                       "ESTABLISHED")
            assert again["start_ns"] > planted.start_ns
        else:
            again.listen(1)
            assert not [c for c in m.connections() if c["sock"] == sock]
            assert m.maps.entry(sock)[1]  # ended
        ended = {k: m.cgroup_metrics()[stranger][k] for k in ("opened", "closed", "active", "bytes_sent",
                                                                "bytes_received")}
        assert ended == {"opened": 1, "closed": 1, "active": 0, "bytes_sent": 1234, "bytes_received": 56}
        assert m.stats()["closed_unseen"] == 1
        if stream:
            events = [e for e in collect(m, lambda ev: any(e["close_unseen"] for e in ev)) if e["sock"] == sock]
            unseen = [i for i, e in enumerate(events) if e["close_unseen"]]
            assert len(unseen) == 1 and unseen[0] < len(events) - 1  # before the new socket's first event
            e = events[unseen[0]]
            assert (e["event"], e["oldstate"], e["newstate"], e["pid"], e["cgroup_id"]) == (
                "close", "ESTABLISHED", "CLOSE", 999999, stranger)
            assert (e["bytes_sent"], e["bytes_received"], e["duration_ns"]) == (1234, 56, 0)
            assert events[unseen[0] + 1]["newstate"] == {"connect": "SYN_SENT", "listen": "LISTEN"}[new_life]


@pytest.mark.parametrize("stream", [False, True], ids=["report", "stream"])
@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
@pytest.mark.parametrize("hook", list(STATE_NEEDS))
def test_a_close_the_kernel_skipped_is_made_good_at_the_sockets_destroy(hook, slots, stream):
    """A close run the kernel skipped leaves the entry live; the socket's destroy
    (programs/conn_destroy.py) ends it as the close would have: counted closed in its cgroup
    with its exact bytes from the socket and a duration, remembered, streamed, and not a lost
    event. Planted: a client reset by its server enters CLOSE (seen, ended) but its socket
    lives until closed; its entry is set back to live in ESTABLISHED, as the skipped run would
    have left it. The server's end, closed and seen, is not made good twice."""
    require(STATE_NEEDS[hook])
    with Monitor(CGROUP_ROOT, stream=stream, state=hook, slots=slots) as m, socket.socket() as listener:
        how = HOOK_WORDS[hook]
        assert m.state_note == f"{how} inet_sock_set_state; skipped closes made good at {how} tcp_destroy_sock"
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
        client.sendall(b"c" * 300)
        assert len(server.recv(300, socket.MSG_WAITALL)) == 300
        server.sendall(b"s" * 40)
        assert len(client.recv(40, socket.MSG_WAITALL)) == 40
        sport = client.getsockname()[1]
        mine = lambda: [c for c in m.connections() if (c["sport"], c["dport"]) == (sport, port)]  # noqa: E731
        assert eventually(lambda: len(mine()) == 1)
        sock, cgroup_id, start = mine()[0]["sock"], mine()[0]["cgroup_id"], mine()[0]["start_ns"]
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()  # a reset: the client's end enters CLOSE in softirq, its socket stays ours
        assert eventually(lambda: m.maps.entry(sock)[1])
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        totals = lambda: {k: m.cgroup_metrics()[cgroup_id][k] for k in ("closed", "bytes_sent",  # noqa: E731
                                                                        "bytes_received")}
        before = totals()
        assert m.stats()["closed_at_destroy"] == 0
        planted = time.monotonic_ns()  # (the programs' clock)
        _rewrite(m, sock, state=TCP_STATE_IDS["ESTABLISHED"])
        assert [c["state"] for c in m.connections() if c["sock"] == sock] == ["ESTABLISHED"]
        client.close()
        assert eventually(lambda: m.maps.entry(sock) is None or m.maps.entry(sock)[1])
        assert not [c for c in m.connections() if c["sock"] == sock]
        after = totals()
        assert (after["closed"] - before["closed"], after["bytes_sent"] - before["bytes_sent"],
                after["bytes_received"] - before["bytes_received"]) == (1, 300, 40)
        assert m.stats()["closed_at_destroy"] == 1 and m.stats()["closed_unseen"] == 0
        lost = m.lost()
        assert (lost["made_good"], lost["missed"], lost["events"]) == (1, 0, 0)
        (made_good,) = [e for e in m.recent() if e["sock"] == sock and e["ts_ns"] > planted]
        if stream:
            since = lambda ev: [e for e in closed(ev, sport=sport) if e["ts_ns"] > planted]  # noqa: E731
            (made_good,) = since(collect(m, since))
        assert (made_good["event"], made_good["oldstate"], made_good["newstate"], made_good["pid"],
                made_good["dport"]) == ("close", "ESTABLISHED", "CLOSE", os.getpid(), port)
        assert (made_good["bytes_sent"], made_good["bytes_received"], made_good["close_unseen"]) == (300, 40, False)
        assert made_good["duration_ns"] == made_good["ts_ns"] - start > 0


@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
@pytest.mark.parametrize("hook", list(STATE_NEEDS))
def test_a_destroyed_socket_does_not_end_an_earlier_sockets_entry(hook, slots):
    """A live entry at a destroyed socket's address whose peer port is not the socket's is an
    earlier socket's (its close skipped, the address reused by one that never connected): the
    destroy leaves it to the other ways a skipped close is ended, and counts nothing."""
    require(STATE_NEEDS[hook])
    with Monitor(CGROUP_ROOT, stream=False, state=hook, slots=slots) as m, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        sport = client.getsockname()[1]
        mine = lambda: [c for c in m.connections() if c["sport"] == sport]  # noqa: E731
        assert eventually(lambda: len(mine()) == 1)
        sock = mine()[0]["sock"]
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()
        assert eventually(lambda: m.maps.entry(sock)[1])
        _rewrite(m, sock, state=TCP_STATE_IDS["ESTABLISHED"], dport=1)
        client.close()
        time.sleep(0.1)
        assert m.maps.entry(sock) is not None and not m.maps.entry(sock)[1]  # live still
        assert m.stats()["closed_at_destroy"] == 0 and m.lost()["made_good"] == 0


@pytest.mark.parametrize("hook", list(STATE_NEEDS))
def test_without_the_destroy_hook_the_monitor_runs_and_says_so(hook, monkeypatch):
    """A kernel that refuses programs/conn_destroy.py (its tracepoint made unknown here) costs
    its skipped closes their bytes since the last report, nothing more: the monitor attaches
    the rest and says so in one note."""
    from bpfhook.programs import conn_destroy

    require(STATE_NEEDS[hook])
    monkeypatch.setattr(conn_destroy, "RAW_TRACEPOINT", "bpfhook_no_such_tracepoint")
    monkeypatch.setattr(conn_destroy, "TP_BTF", "btf_trace_bpfhook_no_such_tracepoint")
    with Monitor(CGROUP_ROOT, stream=False, state=hook) as m:
        assert m.menders == [] and "made good" not in m.state_note
        (note,) = [n for n in m.notes if n.startswith("a close the kernel skips")]
        assert "\n" not in note and "no_such_tracepoint" in note
        assert {p.name for p in m.programs} == MONITOR_PROGRAMS - {"bh_conn_destroy"}
        with socket.create_server(("127.0.0.1", 0)) as listener:
            socket.create_connection(listener.getsockname()).close()
            listener.accept()[0].close()
        assert eventually(lambda: sum(v["closed"] for v in m.cgroup_metrics().values()) >= 2)


@pytest.mark.parametrize("slots", [None, 0], ids=["slots", "conns"])
def test_the_walk_takes_over_older_connections_found_late_before_it_reached_them(slots):
    """Between "attached" and the walk (the command's order), an older connection's transition
    finds it late; the walk then enters it as older all the same: passive by its listener's
    port, owner from /proc, counted in enter_older()."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client, listener.accept()[0], \
                Monitor(CGROUP_ROOT, stream=False, older=False, slots=slots) as m:
            sport = client.getsockname()[1]
            client.shutdown(socket.SHUT_WR)
            ends = lambda: {c["sport"]: c for c in m.connections() if {c["sport"], c["dport"]} == {port, sport}}  # noqa: E731,E501
            assert eventually(lambda: len(ends()) == 2)
            assert all(c["found_late"] for c in ends().values())
            assert m.enter_older() >= 2
            after = ends()
            assert all(c["older"] and not c["found_late"] for c in after.values())
            assert (after[port]["passive"], after[port]["accepted_before"], after[sport]["passive"]) == (True, True, False)
            assert all((c["pid"], c["owner_from_proc"]) == (os.getpid(), True) for c in after.values())
            assert (after[sport]["state"] in ("FIN_WAIT1", "FIN_WAIT2"), after[port]["state"]) == (True, "CLOSE_WAIT")


def test_sockets_racing_for_two_slots_are_each_followed_once():
    """128 sockets opened from 8 threads on both CPUs share two slots: claims race, the losers
    go to conns. Each socket is listed once while it lives, none once closed, none lost."""
    require("atomics")
    total = 64
    with Monitor(CGROUP_ROOT, stream=False, slots=2) as m, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(total)
        port = listener.getsockname()[1]
        clients, lock = [], threading.Lock()

        def connect():
            for _ in range(total // 8):
                s = socket.create_connection(("127.0.0.1", port))
                with lock:
                    clients.append(s)
        threads = [threading.Thread(target=connect) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        servers = [listener.accept()[0] for _ in range(total)]
        ours = lambda: [c for c in m.connections() if port in (c["sport"], c["dport"])]  # noqa: E731
        assert eventually(lambda: len(ours()) == 2 * total)
        assert len({c["sock"] for c in ours()}) == 2 * total
        assert len(m.maps.slot_entries()) <= 2
        for s in clients + servers:
            s.close()
        # (a close in a run the kernel skipped, a softirq's inside a task's, is counted as missed)
        assert eventually(lambda: not ours()) or m.lost()["missed"], (ours(), m.lost())
        assert m.lost()["conns"] == 0


@pytest.mark.parametrize("slots", [0, 1])
def test_ended_entries_are_reused_and_trimmed(slots):
    """An ended connection's entry in conns (no slot table, or its slot was taken) stays for the
    next socket at its address; past the limit the monitor deletes the ones nobody reused, so
    they never push out live connections."""
    if slots:
        require("atomics")
    with Monitor(CGROUP_ROOT, stream=False, slots=slots) as m:
        for _ in range(20):
            port, t = host_server("127.0.0.1", 1, 1)
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"x")
                s.recv(1)
            t.join(10)
        closed = TCP_STATE_IDS["CLOSE"]
        deadline = time.monotonic() + 5
        while m.stats()["transitions"].get(("LAST_ACK", "CLOSE"), 0) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        kept = [k for k, v in m.maps.conns.items() if v.state == closed]
        # 20 connections, 40 sockets; the slab hands freed addresses out again (then the entry
        # was rewritten in place), and the count the kernel keeps bounds what the map holds
        assert 0 < len(kept) <= 40 and m.closed_kept() >= len(kept)
        assert m.trim_closed(limit=len(kept) + 1) == 0  # within the limit: nothing to do
        assert m.trim_closed(limit=0) == len(kept)
        assert not [k for k, v in m.maps.conns.items() if v.state == closed] and m.closed_kept() == 0
        assert m.lost()["conns"] == 0


def test_perf_buffer_path_delivers_the_same_events():
    with Monitor(CGROUP_ROOT, events="perf") as m:
        assert m.events_kind == "perf"
        port, t = host_server("127.0.0.1", 1, 1)
        with socket.create_connection(("127.0.0.1", port)) as s:
            sport = s.getsockname()[1]
            s.sendall(b"x")
            s.recv(1)
        t.join(10)
        events = collect(m, lambda ev: closed(ev, sport=sport))
        assert closed(events, sport=sport)[0]["bytes_sent"] == 1
        assert m.lost()["events"] == 0


@contextlib.contextmanager
def open_files_at_least(count):
    """RLIMIT_NOFILE raised to `count` for the block (a test VM's default soft limit is 1024), then
    restored; skips when the hard limit is lower and may not be raised."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limits[0] < count:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (count, max(limits[1], count)))
        except (ValueError, OSError):
            pytest.skip(f"needs {count} open files; the hard limit is {limits[1]}")
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_every_older_connection_is_counted_and_owned_past_one_read_of_the_walk():
    """More older connections than one read() of the walk holds (16 bytes each, a 32 KB seq_file
    buffer): the socket whose record overflowed is visited again by the next read, and still
    counted and given its owner, though the first visit entered it already."""
    pairs = 1500
    with open_files_at_least(2 * pairs + 256), contextlib.ExitStack() as stack, socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(pairs)
        ports = set()
        for _ in range(pairs):
            client = stack.enter_context(socket.create_connection(listener.getsockname()))
            stack.enter_context(listener.accept()[0])
            ports.add(client.getsockname()[1])
        with Monitor(CGROUP_ROOT, stream=False) as m:
            live = m.connections()
    ours = [x for x in live if x["older"] and ports & {x["sport"], x["dport"]}]
    assert len(ours) == 2 * pairs
    assert all((x["pid"], x["owner_from_proc"]) == (os.getpid(), True) for x in ours)
    assert m.older >= len([x for x in live if x["older"]])  # (a host connection may close meanwhile)


@pytest.mark.parametrize("events", ["ringbuf", "perf"])
def test_older_connections_come_as_existing_events_on_either_buffer(events):
    with loopback_connection() as (port, cport):
        with Monitor(CGROUP_ROOT, events=events) as m:
            assert m.events_kind == events and m.older >= 2

            def ours(evs):
                return [e for e in evs if e["event"] == "existing" and {e["sport"], e["dport"]} == {port, cport}]
            found = ours(collect(m, lambda evs: len(ours(evs)) == 2))
            assert m.lost()["events"] == 0
    assert sorted((e["sport"], e["dport"]) for e in found) == sorted([(port, cport), (cport, port)])
    assert all(e["newstate"] == "ESTABLISHED" and (e["pid"], e["owner_from_proc"]) == (os.getpid(), True)
               for e in found)  # the kernel knows no owner; /proc shows ours
    # in one netns too, only the server's end has the listener's port
    assert {e["sport"]: (e["passive"], e["accepted_before"]) for e in found} == {port: (True, True),
                                                                               cport: (False, False)}


def _options(**kw):
    base = dict(cgroup=CGROUP_ROOT, metrics_interval=60.0)
    base.update(kw)
    return MonitorOptions(**base)


def _run_in_thread(options, on_event):
    """watch() in a thread; returns (stop event, thread, out, err) once attached."""
    stop, out, err = threading.Event(), io.StringIO(), io.StringIO()
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", watch(options, out=out, err=err,
                                                                     on_event=on_event, stop=stop)))
    t.start()
    deadline = time.monotonic() + 10
    while "attached" not in err.getvalue() and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return stop, t, out, err, result


def test_pid_and_container_filters(lab):
    c = lab(ipv6=False)
    seen = []
    server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "5", "5"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    stop, t, out, _err, result = _run_in_thread(_options(pid=server.pid, container=c.name),
                                                 lambda e, ctr: seen.append((e, ctr)))
    try:
        host_port, host_t = host_server("127.0.0.1", 1, 1)  # host traffic the filters must drop
        with socket.create_connection(("127.0.0.1", host_port)) as s:
            s.sendall(b"x")
            s.recv(1)
        host_t.join(10)
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"h" * 5)
            s.recv(5)
        server.wait(10)
        deadline = time.monotonic() + 5
        while not any(e["event"] == "close" for e, _ in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(10)
    assert result["rc"] == 0
    assert seen and all(e["pid"] == server.pid and ctr.name == c.name for e, ctr in seen)
    assert {"accept", "close"} <= {e["event"] for e, _ in seen}
    assert "FINAL CONNECTION METRICS REPORT" in out.getvalue()


def test_the_command_streams_and_reports_connections_open_before_it_started():
    """Streaming, each older connection comes as one "existing" event (its state then), and the
    report built from events counts it as active, with no transition."""
    seen = []
    with loopback_connection() as (port, cport):
        stop, t, out, err, result = _run_in_thread(_options(port=port), lambda e, ctr: seen.append(e))
        try:
            assert eventually(lambda: len([e for e in seen if e["event"] == "existing"]) == 2)
        finally:
            stop.set()
            t.join(10)
    assert result["rc"] == 0
    existing = [e for e in seen if e["event"] == "existing"]
    assert {(e["sport"], e["dport"]) for e in existing} == {(port, cport), (cport, port)}
    assert all(e["newstate"] == "ESTABLISHED" and e["older"] and e["pid"] == os.getpid() for e in existing)
    m = re.search(r"(\d+) TCP connections open before the start entered, (\d+) with their owner from /proc",
                  err.getvalue())
    assert m and int(m[1]) >= int(m[2]) >= 2
    final = out.getvalue().split("FINAL CONNECTION METRICS REPORT")[1]
    assert "Active connections: 2 " in final and "ESTABLISHED" in final


# ---- the command as a subprocess ------------------------------------------------

def _spawn(*args):
    return subprocess.Popen([sys.executable, "-m", "bpfhook", "monitor", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_attached(p, timeout=60):
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


def _our_prog_ids(names=MONITOR_PROGRAMS):
    """Ids of loaded programs named like the monitor's (or one of `names`)."""
    ids = set()
    for prog_id in iter_ids():
        try:
            with Program.from_id(prog_id) as prog:
                if prog_info(prog.fd).name in names:
                    ids.add(prog_id)
        except OSError:  # unloaded between the id walk and the open
            pass
    return ids


def _link_ids(progs):
    """Ids of links holding one of the programs `progs` (by id)."""
    ids, current = set(), bpfsys.get_next_id("link", 0)
    while current is not None:
        try:
            fd = bpfsys.get_fd_by_id("link", current)
        except OSError:  # gone meanwhile
            fd = None
        if fd is not None:
            try:
                if bpfsys.obj_get_info_by_fd(fd, "link").prog_id in progs:
                    ids.add(current)
            finally:
                os.close(fd)
        current = bpfsys.get_next_id("link", current)
    return ids


def test_json_lines_with_port_filter_and_duration(lab):
    c = lab(ipv6=False)
    server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "40", "60"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    p = _spawn("--json", "--port", str(port), "--duration", "3")
    _wait_attached(p)
    other, other_t = host_server("127.0.0.1", 1, 1)  # filtered out by --port
    with socket.create_connection(("127.0.0.1", other)) as s:
        s.sendall(b"x")
        s.recv(1)
    other_t.join(10)
    with socket.create_connection((c.ipv4, port), timeout=10) as s:
        s.sendall(b"j" * 40)
        got = 0
        while got < 60:
            got += len(s.recv(60 - got))
    server.wait(10)
    out, err = p.communicate(timeout=15)  # --duration ends it by itself
    assert p.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    summary = lines.pop()
    assert summary["event"] == "summary" and summary["lost"] == summary["lost_missed"] == summary["lost_conns"] == 0
    assert lines and all(port in (o["sport"], o["dport"]) for o in lines)
    for field in ("ts", "event", "pid", "tid", "comm", "cgroup_id", "cgroup", "container", "netns", "family",
                  "saddr", "sport", "daddr", "dport", "oldstate", "newstate", "bytes_sent", "bytes_received"):
        assert all(field in o for o in lines), field
    accept = [o for o in lines if o["event"] == "accept"][0]
    assert (accept["pid"], accept["cgroup_id"], accept["container"]) == (server.pid, c.cgroup_id, c.name)
    assert accept["cgroup"] == c.cgroup_path
    server_close = [o for o in lines if o["event"] == "close" and o["sport"] == port][0]
    assert (server_close["bytes_sent"], server_close["bytes_received"]) == (60, 40)
    client_close = [o for o in lines if o["event"] == "close" and o["dport"] == port][0]
    assert client_close["container"] is None  # the host's side
    assert (accept["direction"], server_close["direction"], client_close["direction"]) == ("in", "in", "out")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _scrape(port):
    """The monitor's /metrics text, or "" while it does not answer."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def _series(text, metric, cgroup_id):
    """The line of `metric`'s series for cgroup_id in a scrape, or None."""
    lines = [line for line in text.splitlines() if line.startswith(metric + "{") and f'cgroup_id="{cgroup_id}"' in line]
    assert len(lines) <= 1, lines
    return lines[0] if lines else None


def _values(text, cgroup_id, *metrics):
    """The values of `metrics`' series for cgroup_id in a scrape (None: no series)."""
    return [line and int(line.rsplit(" ", 1)[1]) for line in (_series(text, m, cgroup_id) for m in metrics)]


def test_prometheus_scrape_has_per_container_series(lab):
    c = lab(ipv6=False)
    prom_port = _free_port()
    p = _spawn("--prometheus", f"127.0.0.1:{prom_port}", "-m", "30", "--duration", "20")
    try:
        _wait_attached(p)
        server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "7", "9"], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"p" * 7)
            s.recv(9)
        server.wait(10)
        assert eventually(lambda: _values(_scrape(prom_port), c.cgroup_id, "bpfhook_bytes_sent_total") == [9])
        text = _scrape(prom_port)
        assert f'container="{c.name}"' in _series(text, "bpfhook_bytes_sent_total", c.cgroup_id)
        assert _values(text, c.cgroup_id, "bpfhook_connections_opened_total") == [1]
        assert "bpfhook_lost_events_total 0" in text
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
    assert p.returncode == 0, err
    assert "FINAL CONNECTION METRICS REPORT" in out


def test_a_filtered_view_counts_live_connections_bytes_so_far(lab):
    """With --container the report is built from events, not from the maps: a live
    connection's bytes still count before its close (from the report's socket walk), and
    once after it. The container's end is the server's, which waits for the client's close."""
    c = lab(ipv6=False)
    prom_port = _free_port()
    p = _spawn("--container", c.name, "--prometheus", f"127.0.0.1:{prom_port}", "-m", "30", "--duration", "60")
    try:
        _wait_attached(p)
        server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "500", "300"], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())

        def counted():
            return _values(_scrape(prom_port), c.cgroup_id, "bpfhook_bytes_sent_total",
                           "bpfhook_bytes_received_total", "bpfhook_connections_closed_total")
        with socket.create_connection((c.ipv4, port), timeout=10) as s:
            s.sendall(b"h" * 500)
            got = 0
            while got < 300:
                got += len(s.recv(300 - got))
            assert eventually(lambda: counted() == [300, 500, 0])  # (the server waits for our FIN)
        server.wait(10)
        assert eventually(lambda: counted() == [300, 500, 1])
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15)
    assert p.returncode == 0, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_shutdown_leaves_nothing_attached(sig):
    progs_before = _our_prog_ids()
    walks_before = _our_prog_ids(WALKS)
    p = _spawn("-m", "60")
    try:
        accept_line = _wait_attached(p)
        progs_running = _our_prog_ids() - progs_before
        links_running = _link_ids(progs_running)
        assert eventually(lambda: len(_our_prog_ids(WALKS) - walks_before) == len(WALKS))
        progs_running |= _our_prog_ids(WALKS) - walks_before
    finally:
        p.send_signal(sig)
        out, err = p.communicate(timeout=15 * slow_factor())
    hook = best_accept_hook()
    assert f"through {ACCEPT_NOTE[hook]}" in accept_line
    expected = 4 + ACCEPT_PROGRAMS[hook]  # state, destroy, connect4, connect6 and the accept hook's
    assert len(progs_running) == expected + len(WALKS) and len(links_running) == expected
    if sig == signal.SIGTERM:
        assert p.returncode == 0, err
        assert "FINAL CONNECTION METRICS REPORT" in out and "detached" in err
    else:
        assert p.returncode == -signal.SIGKILL
    # the kernel frees programs after an RCU grace period
    everything = MONITOR_PROGRAMS | WALKS
    eventually(lambda: not (_our_prog_ids(everything) & progs_running or _link_ids(progs_running)), timeout=10)
    assert not _our_prog_ids(everything) & progs_running
    assert not _link_ids(progs_running)


def test_the_report_alone_wakes_the_monitor_once_a_second():
    """Without streaming nothing arrives one by one: the loop sleeps until its next chore (1 s)
    or report, not every poll interval (it woke 10 times a second)."""
    p = _spawn("-m", "60")
    try:
        _wait_attached(p)
        time.sleep(slow_factor())  # the rest of start-up (older connections) is over
        before = _voluntary_switches(p.pid)
        time.sleep(4)
        woke = _voluntary_switches(p.pid) - before
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=15 * slow_factor())
    assert p.returncode == 0, err
    assert woke <= 4 + 2


def _voluntary_switches(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))


def test_missing_cgroup_is_one_line_and_nonzero():
    p = subprocess.run([sys.executable, "-m", "bpfhook", "monitor", "-c", "/nonexistent/cg", "--duration", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert len(p.stderr.strip().splitlines()) == 1 and "/nonexistent/cg" in p.stderr


def test_an_accept_hook_the_kernel_refuses_is_one_line_and_nonzero():
    """--accept names one hook: no falling back to another, and nothing left attached."""
    refused = next((hook for hook, need in ACCEPT_NEEDS.items() if not features.has(need)), None)
    if refused is None:
        pytest.skip("this kernel has every accept hook")
    before = _our_prog_ids()
    p = subprocess.run([sys.executable, "-m", "bpfhook", "monitor", "--accept", refused, "--duration", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60 * slow_factor())
    assert p.returncode == 1, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("bpfhook: error: "), p.stderr
    eventually(lambda: not _our_prog_ids() - before, timeout=10)  # freed after an RCU grace period
    assert _our_prog_ids() - before == set()
