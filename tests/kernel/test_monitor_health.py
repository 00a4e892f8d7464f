"""Connection health, provoked for real: a refused connect (a closed port), a timed-out one (its
SYN-ACKs dropped in the client's lab namespace), a lost SYN (a slow connect, no retransmit),
retransmits (the server's ACKs dropped there for a bounded time), resets sent and received (an
abort at either end), and the connect time and smoothed RTT of connections that worked. Each
shows in the close event, in the connection's entry, and in its container's metrics, and in
a filtered report as in the maps. The client runs in a lab container; servers listen on the
host's side of its veth (monitor_helpers.host_server)."""
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from bpfhook import cgroups
from bpfhook.monitor import Monitor
from bpfhook.exporters import HISTOGRAMS, PER_CGROUP_METRICS
from bpfhook.monitor_cli import MonitorOptions, watch
from bpfhook.programs import conn_common, conn_state
from bpfhook.records import CONNECT_BUCKETS_US
from bpfhook.report import HEALTH_FIELDS, CgroupTotals
from pybpf.asm import Program
from pybpf.prog import load
from tests import oracles
from tests.conftest import eventually
from tests.kernel.monitor_helpers import closed, collect, host_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (BPF, namespaces)")

# The client, in the container: one connect() to argv[1]:argv[2] with TCP_SYNCNT argv[3]; then,
# connected, send argv[4] bytes, wait for one byte back, and close (SO_LINGER 0 when argv[5] is
# "abort"; "open": not until killed). Prints {"error": errno or 0, "elapsed_us": the connect()
# call's time, "sport": ...}.
CLIENT = r"""
import json, socket, struct, sys, time
host, port, syncnt, size, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = socket.socket()
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, syncnt)
s.settimeout(30)
t = time.monotonic()
try:
    s.connect((host, port))
except OSError as e:
    print(json.dumps({"error": e.errno, "elapsed_us": 0, "sport": s.getsockname()[1]}), flush=True)
    sys.exit(0)
elapsed = (time.monotonic() - t) * 1e6
print(json.dumps({"error": 0, "elapsed_us": elapsed, "sport": s.getsockname()[1]}), flush=True)
sys.stdin.readline()  # the test's go
s.sendall(b"c" * size)
s.recv(1)
if how == "abort":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
elif how == "open":
    sys.stdin.readline()  # (the test kills it)
s.close()
"""


@pytest.fixture(params=conn_state.HOOKS)
def setup(lab, request):
    """A lab container and a streaming Monitor, its state program on each hook (typed reads, or
    bpf_probe_read_kernel)."""
    c = lab(ipv6=False)
    with Monitor(cgroups.mount(), stream=True, state=request.param) as m:
        assert set(m.health) == {"tcp_retransmit_skb", "tcp_send_reset", "tcp_receive_reset"}, m.notes
        yield c, m


def _in_netns(c, *argv):
    """argv (iptables ...) in the container's network namespace: its rules go with it."""
    ip, iptables = oracles.require("ip"), oracles.require("iptables")
    argv = [iptables, *argv[1:]] if argv[0] == "iptables" else list(argv)
    subprocess.run([ip, "netns", "exec", c.netns, *argv], check=True, capture_output=True)


def _client(c, port, syncnt=6, size=0, how="close"):
    p = c.spawn([sys.executable, "-c", CLIENT, c.host_ipv4, str(port), str(syncnt), str(size), how],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return p, json.loads(p.stdout.readline())


def _closed_port(address):
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _metrics(m, c):
    m.refresh_live()
    return m.cgroup_metrics()[c.cgroup_id]


def test_refused_connect_is_a_failure_with_a_reset_received(setup):
    c, m = setup
    port = _closed_port(c.host_ipv4)
    p, got = _client(c, port)
    p.wait(10)
    assert got["error"] == 111  # ECONNREFUSED
    events = collect(m, lambda evs: closed(evs, dport=port))
    (close,) = closed(events, dport=port)
    assert (close["failure"], close["oldstate"], close["srtt_us"], close["connect_us"]) == ("refused", "SYN_SENT", 0, 0)
    assert (close["resets_received"], close["resets_sent"], close["retransmits"]) == (1, 0, 0)
    health = _metrics(m, c)
    assert (health["failed_refused"], health["failed_timeout"], health["failed_other"]) == (1, 0, 0)
    assert (health["resets_received"], health["connects"], sum(health["connect_buckets"])) == (1, 0, 0)


def test_connect_whose_syn_acks_are_dropped_times_out(setup):
    c, m = setup
    with socket.socket() as listener:  # answers SYNs; the answers are dropped in the container
        listener.bind((c.host_ipv4, 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        _in_netns(c, "iptables", "-A", "INPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP")
        started = time.monotonic()
        p, got = _client(c, port, syncnt=1)  # SYN, retried, given up a few seconds later
        p.wait(30)
    assert got["error"] == 110 and time.monotonic() - started < 20  # ETIMEDOUT
    events = collect(m, lambda evs: closed(evs, dport=port))
    (close,) = closed(events, dport=port)
    assert close["failure"] == "timeout" and close["retransmits"] == 0  # a SYN's retries are no retransmits
    health = _metrics(m, c)
    assert (health["failed_timeout"], health["failed_refused"], health["connects"]) == (1, 0, 0)
    assert health["retransmits"] == 0


def test_a_lost_syn_is_a_slow_connect_not_a_retransmit(setup):
    """The container drops its first SYN (a rule made and removed here): the SYN is sent again a
    second later and the connection works. Its connect time says so, its retransmits do not."""
    c, m = setup
    port, server = host_server(c.host_ipv4, 10, 1)
    rule = ["OUTPUT", "-p", "tcp", "--syn", "--dport", str(port), "-j", "DROP"]
    _in_netns(c, "iptables", "-A", *rule)
    try:
        p = c.spawn([sys.executable, "-c", CLIENT, c.host_ipv4, str(port), "6", "10", "close"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while _dropped(c, rule) < 1:  # the first SYN met the rule: let the next one through
            assert time.monotonic() < deadline, "no SYN dropped"
            time.sleep(0.05)
    finally:
        _in_netns(c, "iptables", "-D", *rule)
    got = json.loads(p.stdout.readline())
    p.stdin.write("go\n")
    p.stdin.flush()
    p.wait(10)
    server.join(10)
    assert got["error"] == 0 and got["elapsed_us"] >= 900_000  # the SYN's first retry: after 1 s
    events = collect(m, lambda evs: closed(evs, sport=got["sport"]))
    (close,) = closed(events, sport=got["sport"])
    assert close["failure"] is None and close["retransmits"] == 0 and close["connect_us"] >= 900_000
    health = _metrics(m, c)
    assert (health["connects"], health["retransmits"], health["failed_timeout"]) == (1, 0, 0)
    assert sum(health["connect_buckets"][:CONNECT_BUCKETS_US.index(500_000) + 1]) == 0  # in the slow buckets


def _dropped(c, rule):
    """Packets the container's rule (iptables -A argv) dropped so far."""
    out = subprocess.run([oracles.require("ip"), "netns", "exec", c.netns, oracles.require("iptables"), "-L",
                          rule[0], "-v", "-x", "-n"], check=True, capture_output=True, text=True).stdout
    return sum(int(line.split()[0]) for line in out.splitlines() if f"dpt:{rule[5]}" in line and "DROP" in line)


def test_retransmits_while_acks_are_dropped_count_per_connection_and_container(setup):
    c, m = setup
    port, server = host_server(c.host_ipv4, 100_000, 1)
    p, got = _client(c, port, size=100_000)
    assert got["error"] == 0
    rule = ["INPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP"]
    _in_netns(c, "iptables", "-A", *rule)
    try:
        p.stdin.write("go\n")
        p.stdin.flush()
        time.sleep(1.5)  # RTO 200 ms, doubling: a few retransmits
        assert m.refresh_live()  # (the live walk reads srtt_us)
        live = [conn for conn in m.connections() if conn["sport"] == got["sport"]]
        assert live and live[0]["retransmits"] >= 2 and live[0]["srtt_us"] > 0, live
    finally:
        _in_netns(c, "iptables", "-D", *rule)
    p.wait(10)
    server.join(10)
    events = collect(m, lambda evs: closed(evs, sport=got["sport"]))
    (close,) = closed(events, sport=got["sport"])
    assert close["retransmits"] >= live[0]["retransmits"] and close["failure"] is None
    assert close["srtt_us"] > 0 and 0 < close["connect_us"] <= got["elapsed_us"] + 1000
    health = _metrics(m, c)
    assert health["retransmits"] == close["retransmits"]


def test_abort_sends_a_reset_and_connect_time_and_rtt_are_histograms(setup):
    c, m = setup
    port, server = host_server(c.host_ipv4, 10, 1)
    p, got = _client(c, port, size=10, how="abort")
    p.stdin.write("go\n")
    p.stdin.flush()
    p.wait(10)
    server.join(10)
    events = collect(m, lambda evs: len(closed(evs, dport=port)) + len(closed(evs, sport=port)) >= 2)
    (client_close,) = closed(events, sport=got["sport"])
    (server_close,) = closed(events, sport=port)
    assert client_close["connect_us"] > 0 and client_close["srtt_us"] > 0
    # the abort's reset, sent just after the close, is in the close event; the peer received it
    assert (client_close["resets_sent"], client_close["resets_received"]) == (1, 0)
    assert (server_close["resets_sent"], server_close["resets_received"]) == (0, 1)
    health = _metrics(m, c)
    assert (health["resets_sent"], health["resets_received"], health["connects"]) == (1, 0, 1)
    assert health["connect_sum_us"] == client_close["connect_us"]
    bucket = sum(1 for bound in CONNECT_BUCKETS_US if client_close["connect_us"] > bound)
    assert health["connect_buckets"] == [int(i == bucket) for i in range(len(CONNECT_BUCKETS_US) + 1)]
    assert sum(health["rtt_buckets"]) == 1 and health["rtt_sum_us"] == client_close["srtt_us"]
    here = m.cgroup_metrics()[cgroups.cgroup_id(cgroups.of_pid(os.getpid()))]
    assert here["resets_received"] >= 1  # the server's end, in the test's cgroup


@pytest.mark.parametrize("value", [0, 1, 100, 101, 499, 500, 501, 9_999_999, 10_000_000, 10_000_001, 2**40, 2**62])
def test_bucket_index_counts_the_bounds_a_value_exceeds(value):
    """conn_common.bucket_index, branchless, run by the kernel: the bucket Prometheus' le gives
    (a value on a bound is in that bound's bucket), for values on, around and far past the bounds."""
    p = Program("bucket")
    slot, out = p.stack.alloc(8), p.stack.alloc(8)
    p.r1 = value
    slot.u64[0] = p.r1
    conn_common.bucket_index(p, slot.u64[0], CONNECT_BUCKETS_US, out)
    p.r0 = out.u64[0]
    p.exit()
    with load(p, "socket_filter", name="bucket") as prog:
        assert prog.test_run(bytes(64)).retval == sum(1 for bound in CONNECT_BUCKETS_US if value > bound)


# A server on the host that accepts one connection, reads argv[2] bytes, and aborts it (SO_LINGER 0)
ABORTING_SERVER = r"""
import socket, struct, sys
with socket.socket() as s:
    s.bind((sys.argv[1], 0))
    s.listen(1)
    print(s.getsockname()[1], flush=True)
    conn, _ = s.accept()
    conn.recv(int(sys.argv[2]))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
"""


def test_a_peers_reset_is_received_in_the_close_event(setup):
    """The server aborts: the client, in the container, receives the reset (its recv fails), and
    each end's close event says who sent it."""
    c, m = setup
    server = subprocess.Popen([sys.executable, "-c", ABORTING_SERVER, c.host_ipv4, "10"], stdout=subprocess.PIPE,
                              text=True)
    port = int(server.stdout.readline())
    p, got = _client(c, port, size=10)
    p.stdin.write("go\n")
    p.stdin.flush()
    p.wait(10)
    server.wait(10)
    events = collect(m, lambda evs: len(closed(evs, sport=got["sport"])) + len(closed(evs, sport=port)) >= 2)
    (client_close,) = closed(events, sport=got["sport"])
    (server_close,) = closed(events, sport=port)
    assert (client_close["resets_sent"], client_close["resets_received"], client_close["oldstate"]) == (
        0, 1, "ESTABLISHED")
    assert (server_close["resets_sent"], server_close["resets_received"]) == (1, 0)
    health = _metrics(m, c)
    assert (health["resets_sent"], health["resets_received"]) == (0, 1)


def test_a_filtered_report_shows_the_health_the_maps_count_for_its_connections(setup):
    """`monitor --container NAME`'s report comes from the events it keeps, not the maps: its
    health columns and series are still what the maps (another monitor's, unfiltered) give the
    container: a refused connect, one that works, one that aborts, one left open."""
    c, m = setup
    stop, out, err, result = threading.Event(), io.StringIO(), io.StringIO(), {}
    options = MonitorOptions(cgroup=cgroups.mount(), metrics_interval=60.0, container=c.name,
                             prometheus=("127.0.0.1", 0))
    t = threading.Thread(target=lambda: result.setdefault("rc", watch(options, out=out, err=err, stop=stop)))
    t.start()
    assert eventually(lambda: "attached" in err.getvalue() or not t.is_alive(), timeout=30), err.getvalue()
    opened = None
    try:
        closed_port = _closed_port(c.host_ipv4)
        refused, _ = _client(c, closed_port)
        refused.wait(10)
        ports = [closed_port]
        for how in ("close", "abort", "open"):
            port, server = host_server(c.host_ipv4, 10, 1)
            p, got = _client(c, port, size=10, how=how)
            p.stdin.write("go\n")
            p.stdin.flush()
            if how == "open":  # left open until the report is made
                opened = p
                break
            p.wait(10)
            server.join(10)
            ports.append(port)
        events = collect(m, lambda evs: all(closed(evs, dport=port) for port in ports))
        assert all(closed(events, dport=port) for port in ports)
        time.sleep(0.5)  # (the filtered monitor reads them too)
        url = re.search(r"Prometheus metrics on (\S+)", err.getvalue())[1]
        scraped = _series(urllib.request.urlopen(url, timeout=10).read().decode(), c.name)
        maps = {k: v for k, v in _metrics(m, c).items() if k in HEALTH_FIELDS}
    finally:
        stop.set()
        t.join(20)
        if opened is not None:
            opened.kill()
    assert result["rc"] == 0, err.getvalue()
    final = out.getvalue().split("FINAL CONNECTION METRICS REPORT")[1]
    (row,) = [line for line in final.splitlines() if line.endswith(f"(id {c.cgroup_id})")]
    failed, retrans, p50, p99 = re.search(r" (\d+) +(\d+) +(\S+) +(\S+)  \S+ \(id \d+\)$", row).groups()
    totals = CgroupTotals(c.cgroup_id, None, health=maps)
    assert totals.failed() == 1 and maps["connects"] == 3 and maps["resets_sent"] == 1  # (the open one counts)
    assert (int(failed), int(retrans)) == (totals.failed(), maps["retransmits"]) and "-" not in (p50, p99)
    # and in its Prometheus series, every health figure. (Times are close, not equal: each
    # monitor's programs time a handshake at their own runs.)
    for name, _kind, _help, field in PER_CGROUP_METRICS:
        if field in maps:
            assert scraped[name] == maps[field], name
    for name, _help, buckets, total, _bounds in HISTOGRAMS:
        got = (scraped[name + "_count"], scraped[name + "_sum"])
        assert got == (sum(maps[buckets]), pytest.approx(maps[total] / 1e6, rel=0.25)), (name, got, maps[total])


def _series(exposition, container):
    """{metric name: value} of a container's series in a Prometheus exposition (buckets left out)."""
    values = {}
    for line in exposition.splitlines():
        m = re.fullmatch(r'(\w+)\{([^}]*)\} (\S+)', line)
        if m and f'container="{container}"' in m[2] and "le=" not in m[2]:
            values[m[1]] = float(m[3])
    return values
