"""`bpfhook monitor` as a command: filters, JSON lines, the report's wake-ups, bad input."""
import collections
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from bpfhook.monitor_cli import MonitorOptions, watch
from pybpf import features
from tests.conftest import eventually, slow_factor
from tests.kernel.monitor_helpers import (ACCEPT_NEEDS, CGROUP_ROOT, ROOT, SERVER, host_server, loopback_connection,
                                          our_prog_ids, spawn_monitor, wait_attached)


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


def _host_exchange():
    """One byte each way over loopback, to a host server: traffic a filter must leave out."""
    port, t = host_server("127.0.0.1", 1, 1)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"x")
        s.recv(1)
    t.join(10)


def test_pid_and_container_filters(lab):
    c = lab(ipv6=False)
    seen = []
    server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "5", "5"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    stop, t, out, _err, result = _run_in_thread(_options(pid=server.pid, container=c.name),
                                                 lambda e, ctr: seen.append((e, ctr)))
    try:
        _host_exchange()  # host traffic the filters must drop
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


def test_unfiltered_json_lines_with_the_summary_from_the_maps():
    """--json with no filter: every event written, the summary's "events" their count, and its
    closes from the kernel's maps (the events are not also folded into a report)."""
    p = spawn_monitor("--json", "--duration", "3")
    wait_attached(p)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)):
                listener.accept()[0].close()
    out, err = p.communicate(timeout=15 * slow_factor())
    assert p.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    summary = lines.pop()
    events = [o for o in lines if o["event"] != "lost"]
    assert summary["event"] == "summary" and summary["events"] == len(events) > 0
    ours = [o for o in events if port in (o["sport"], o["dport"])]
    kinds = collections.Counter(o["event"] for o in ours)
    assert (kinds["connect"], kinds["accept"], kinds["close"]) == (3, 3, 6), ours
    assert summary["closed"] >= 6 and summary["lost"] == summary["lost_ring_full"] + summary["lost_with_room"] + \
        summary["lost_missed"]


def test_json_lines_with_port_filter_and_duration(lab):
    c = lab(ipv6=False)
    server = c.spawn([sys.executable, "-c", SERVER, c.ipv4, "40", "60"], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    p = spawn_monitor("--json", "--port", str(port), "--duration", "3")
    wait_attached(p)
    _host_exchange()  # filtered out by --port
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


def test_the_report_alone_wakes_the_monitor_once_a_second():
    """Without streaming nothing arrives one by one: the loop sleeps until its next chore (1 s)
    or report, not every poll interval (it woke 10 times a second)."""
    p = spawn_monitor("-m", "60")
    try:
        wait_attached(p)
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
    before = our_prog_ids()
    p = subprocess.run([sys.executable, "-m", "bpfhook", "monitor", "--accept", refused, "--duration", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60 * slow_factor())
    assert p.returncode == 1, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("bpfhook: error: "), p.stderr
    eventually(lambda: not our_prog_ids() - before, timeout=10)  # freed after an RCU grace period
    assert our_prog_ids() - before == set()


def test_timings_say_where_the_start_went_and_when_the_first_event_came():
    """--timings: one line of the start-up phases (the programs built at the first start, kept
    for the next: its build phase is nothing), then one when the first event arrives."""
    lines = []
    for _ in range(2):
        seen = []
        with loopback_connection() as (port, _cport):
            stop, t, _out, err, result = _run_in_thread(_options(port=port, timings=True),
                                                        lambda e, ctr: seen.append(e))
            try:
                with socket.create_connection(("127.0.0.1", port)):
                    pass
                assert eventually(lambda: "first event" in err.getvalue())
            finally:
                stop.set()
                t.join(10)
        assert result["rc"] == 0
        lines.append(err.getvalue())
    phases = [dict(re.fullmatch(r"([a-z ]+) ([\d.]+) ms", phase).groups()
                   for phase in re.search(r"timings: (.*?) \(", said)[1].split(", ")) for said in lines]
    assert list(phases[1]) == ["interpreter and imports", "kernel offsets", "maps", "build", "load",
                               "attach and the rest", "older connections"]
    assert float(phases[1]["build"]) < 1 and float(phases[1]["load"]) > 0
    assert re.search(r"first event [\d.]+ ms after the start", lines[1])


def test_the_first_events_come_before_the_walk_of_older_connections():
    """The walk of the connections open before the start (every namespace's sockets, their owners
    in /proc) runs after the first poll: with connections coming all along, the first event is
    said before the walk's line."""
    stop_traffic = threading.Event()

    def traffic(listener):
        while not stop_traffic.is_set():
            with socket.create_connection(listener.getsockname()):
                listener.accept()[0].close()
            time.sleep(0.002)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        t_traffic = threading.Thread(target=traffic, args=(listener,))
        t_traffic.start()
        try:
            stop, t, _out, err, result = _run_in_thread(_options(timings=True), lambda e, ctr: None)
            try:
                assert eventually(lambda: "TCP connections open before the start" in err.getvalue())
            finally:
                stop.set()
                t.join(10)
        finally:
            stop_traffic.set()
            t_traffic.join(10)
    said = err.getvalue()
    assert result["rc"] == 0
    assert said.index("first event") < said.index("TCP connections open before the start") < said.index("timings:")


@pytest.mark.parametrize("transitions", [False, True], ids=["openings-and-closes", "transitions"])
def test_the_stream_sends_openings_and_closes_unless_asked_for_every_transition(transitions):
    """By default a connection streams its opening and its close (which carries its bytes), as
    tcplife prints; --transitions adds every state in between. The report counts them all alike
    (a filtered text report, made from the events, asks for every transition)."""
    seen = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        stop, t, out, _err, result = _run_in_thread(_options(port=port, transitions=transitions, json=True),
                                                    lambda e, ctr: seen.append(e))
        try:
            client = socket.create_connection(("127.0.0.1", port))
            server, _ = listener.accept()
            client.sendall(b"x" * 100)
            assert len(server.recv(100, socket.MSG_WAITALL)) == 100
            client.close()
            server.close()
            assert eventually(lambda: len([e for e in seen if e["event"] == "close"]) == 2)
        finally:
            stop.set()
            t.join(10)
    assert result["rc"] == 0
    states = {(e["oldstate"], e["newstate"]) for e in seen if e["event"] == "state"}
    middle = {("SYN_SENT", "ESTABLISHED"), ("ESTABLISHED", "FIN_WAIT1")}
    assert {("CLOSE", "SYN_SENT"), ("LISTEN", "SYN_RECV")} <= states
    assert (middle <= states) if transitions else not states & middle
    (sent,) = [e["bytes_sent"] for e in seen if e["event"] == "close" and e["dport"] == port]
    assert sent == 100
    assert json.loads(out.getvalue().splitlines()[-1])["event"] == "summary"
    seen.clear()
    with socket.socket() as listener:  # a filtered text report: every transition
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        stop, t, out, _err, result = _run_in_thread(_options(port=port), lambda e, ctr: seen.append(e))
        try:
            with socket.create_connection(("127.0.0.1", port)), listener.accept()[0]:
                assert eventually(lambda: ("SYN_SENT", "ESTABLISHED") in {(e["oldstate"], e["newstate"])
                                                                          for e in seen})
        finally:
            stop.set()
            t.join(10)
    assert re.search(r"SYN_SENT\s+-> ESTABLISHED\s+1", out.getvalue().split("FINAL CONNECTION METRICS REPORT")[1])
