"""The socket and task walks: live connections' bytes so far, connections whose close was
missed, the network namespaces in use, and the connections open before the monitor started."""
import contextlib
import ctypes
import itertools
import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time

import pytest

from bpfhook import netns, procfs
from bpfhook.monitor import Monitor
from bpfhook.records import F_OWNER_FROM_ACCEPT
from pybpf.errors import FeatureUnavailable
from tests.conftest import eventually, slow_factor
from tests.kernel.monitor_helpers import CGROUP_ROOT, ROOT, SERVER, collect, loopback_connection


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
