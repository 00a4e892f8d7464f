"""The monitor's engine end to end on the real kernel: connections from lab containers and the host,
IPv4 and IPv6, bytes and durations, per-cgroup metrics, the unstreamed report, the perf buffer.

Traffic goes between the host and lab containers (addresses inside netns the test creates) or
over loopback; every wait is bounded.
"""
import os
import socket
import subprocess
import sys
import time

import pytest

from bpfhook import cgroups
from bpfhook.monitor import Monitor
from bpfhook.programs.conn_common import Maps
from bpfhook.records import EV_CLOSE, EVENT_CODEC, RECENT_SLOTS, TCP_STATE_IDS, zero_metrics
from bpfhook.trafficgen import Server, generate
from pybpf import features
from tests.kernel.monitor_helpers import CGROUP_ROOT, HOOK_WORDS, STATE_NEEDS, closed, collect, host_server

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


def of_sock(events, first):
    """The events of `first`'s socket from `first` on (a freed sock's address is soon reused)."""
    return [e for e in events if e["sock"] == first["sock"] and e["ts_ns"] >= first["ts_ns"]]


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
    held = {"free": {"key": 0, "metrics": zero_metrics()},
            "taken": {"key": stranger, "metrics": dict(zero_metrics(), closed=5, bytes_sent=7)}}
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


def test_a_full_ring_counts_its_refusals_apart():
    """Events refused while the ring is full count in lost()["ring_full"] (what a larger ring or a
    faster reader keeps), not in "with_room" (the kernel failing a reservation with room left)."""
    with Monitor(CGROUP_ROOT, ring_size=4096, older=False) as m:  # a page: 26 events fill it
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            for _ in range(20):  # 4 events each, none read
                with socket.create_connection(listener.getsockname()):
                    listener.accept()[0].close()
        lost = m.lost()
        assert lost["ring_full"] >= 80 - 4096 // 152 and lost["with_room"] == 0
        assert lost["events"] == lost["ring_full"] + lost["with_room"] + lost["missed"]
        assert 0 < len(m.read(0)) <= 4096 // 152


def test_events_the_ring_refused_with_room_left_are_read_from_the_spill():
    """emit() keeps an event the ring refused with room left in this CPU's spill ring. The kernel
    fails such reservations a few times a second under load, never on demand: the test writes
    the spill as the programs do. spilled() reads each event once, oldest first, and counts those
    written over before it read them in lost()["with_room"]."""
    with Monitor(CGROUP_ROOT, older=False) as m:
        assert m.spilled() == [] and m.lost()["with_room"] == 0
        blank = EVENT_CODEC.decode(bytes(EVENT_CODEC.size))

        def spill(next, stamps):
            """A CPU's spill: `next`, and the slots' ts_ns (0: never written)."""
            return {"next": next, "events": [dict(blank, ts_ns=ts, kind=EV_CLOSE, family=socket.AF_INET)
                                             for ts in stamps]}

        cpus = len(m.maps.spill.lookup(0))
        idle = spill(0, [0] * RECENT_SLOTS)
        m.maps.spill.update(0, [spill(3, [1, 2, 3] + [0] * (RECENT_SLOTS - 3))] + [idle] * (cpus - 1))
        assert [e["ts_ns"] for e in m.spilled()] == [1, 2, 3] and m.spilled() == []
        # 20 more: the ring of 16 kept the last 16, from slot 23 % 16 = 7 on
        m.maps.spill.update(0, [spill(23, [100 + (slot - 7) % RECENT_SLOTS for slot in range(RECENT_SLOTS)])]
                            + [idle] * (cpus - 1))
        assert [e["ts_ns"] for e in m.spilled()] == list(range(100, 100 + RECENT_SLOTS))
        assert m.lost()["with_room"] == 20 - RECENT_SLOTS
