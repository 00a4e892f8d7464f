"""Replay timing for real: 50 flows captured overlapping are replayed overlapping (the target's
accept and close times say so), and --rate 200 is held within 5% for 10 s."""
import http.client
import socket
import threading
import time

import pytest

from bpfhook import flows, replay
from tests.capturing import capture, http_server
from tests.conftest import slow_factor
from tests.pcapfiles import CLIENT, SERVER, conversation, write

FLOWS = 50

# What these tests measure is the host's timing precision; an emulated CPU (the kernel matrix's TCG
# guests) has none to speak of.
pytestmark = pytest.mark.skipif(slow_factor() > 1, reason="timing precision is not measurable under emulation")


def read_log(path):
    """[(CLOCK_MONOTONIC seconds, what, detail)] of a tests/httpserver.py --log file."""
    with open(path) as f:
        return [(float(t), what, rest) for t, what, rest in (line.rstrip("\n").split(" ", 2) for line in f)]


def overlapping_clients(addr, port):
    """FLOWS connections opened together, each holding on for ~0.6 s with two requests on it."""
    start = threading.Barrier(FLOWS)
    errors = []

    def client(n):
        try:
            start.wait(timeout=10)
            time.sleep(0.002 * n)  # a known spread of connection starts
            conn = http.client.HTTPConnection(addr, port, timeout=10)
            conn.connect()
            try:
                for path in ("/health", "/users/2"):
                    time.sleep(0.3)
                    conn.request("GET", path)
                    conn.getresponse().read()
            finally:
                conn.close()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))
    threads = [threading.Thread(target=client, args=(n,)) for n in range(FLOWS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[:3]


def test_fifty_overlapping_flows_replay_overlapping(lab, tmp_path):
    c = lab(ipv6=False)
    out, log = tmp_path / "fifty.pcapng", tmp_path / "accepts.log"
    with http_server("--host", "0.0.0.0", "--port", "8080", spawn=c.spawn):
        with capture(c, out):
            overlapping_clients(c.ipv4, 8080)
    tcp = [f for f in flows.read(str(out)).flows if f.kind == "tcp"]
    assert len(tcp) == FLOWS and max(f.first_ns for f in tcp) < min(f.last_ns for f in tcp)  # captured overlapping
    with http_server("--log", str(log)) as port:
        report = replay.replay(str(out), f"127.0.0.1:{port}", opts=replay.Options(speed=1.0, timeout=30))
    assert report["summary"]["identical"] == 2 * FLOWS, report["summary"]
    events = read_log(log)
    accepts = sorted(t for t, what, _ in events if what == "accept")
    closes = sorted(t for t, what, _ in events if what == "close")
    assert len(accepts) == len(closes) == FLOWS
    assert accepts[-1] < closes[0]  # all 50 connections open at once, as captured
    captured = sorted((f.first_ns - min(g.first_ns for g in tcp)) / 1e9 for f in tcp)
    replayed = [t - accepts[0] for t in accepts]
    assert max(abs(a - b) for a, b in zip(captured, replayed)) < 0.05, (captured, replayed)
    assert report["timing"]["gap_error_ms"]["p50"] < 5, report["timing"]


def test_rate_is_held_for_ten_seconds(tmp_path):
    """2000 requests on 100 keep-alive connections at --rate 200: the server sees 200/s, +-5%, each second."""
    rate, total, conns = 200, 2000, 100
    request = b"GET /health HTTP/1.1\r\nHost: lab\r\n\r\n"
    pkts = []
    for n in range(conns):
        turns = [(1 + (k * conns + n) * 0.1, "c", request) for k in range(total // conns)]
        pkts += conversation((CLIENT[0], CLIENT[1] + n), SERVER, turns, isn_c=1000 + n * 104729, start_ms=n * 0.1)
    path = write(tmp_path / "rate.pcapng", pkts)
    log = tmp_path / "requests.log"
    with http_server("--log", str(log)) as port:
        report = replay.replay(path, f"127.0.0.1:{port}", opts=replay.Options(rate=rate, timeout=40))
    seen = sorted(t for t, what, _ in read_log(log) if what == "request")
    assert report["summary"]["errors"] == 0 and len(seen) == total
    t = report["timing"]
    assert abs(t["achieved_rate"] - rate) / rate < 0.05 and t.get("shortfall_pct", 0) < 5, t
    assert t["on_time_pct"] >= 95, t
    span = seen[-1] - seen[0]
    assert abs(span - (total - 1) / rate) < 0.05 * total / rate, span
    per_second = [sum(1 for s in seen if seen[0] + i <= s < seen[0] + i + 1) for i in range(int(span))]
    assert len(per_second) >= 9 and all(abs(n - rate) <= 0.05 * rate for n in per_second), per_second


def test_a_slow_target_shows_the_shortfall(tmp_path):
    """A server that takes 50 ms per answer on one connection cannot take --rate 100: the report says by how much."""
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                for _ in range(data.count(b"\r\n\r\n")):
                    time.sleep(0.05)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    threading.Thread(target=serve, daemon=True).start()
    turns = [(1 + k, "c", b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n") for k in range(20)]
    path = write(tmp_path / "slow.pcapng", conversation(CLIENT, SERVER, turns))
    with srv:
        report = replay.replay(path, "127.0.0.1:%d" % srv.getsockname()[1], opts=replay.Options(rate=100, timeout=20))
    t = report["timing"]
    assert report["summary"]["errors"] == 0 and 15 < t["achieved_rate"] < 21, t
    assert 75 < t["shortfall_pct"] < 85 and t["on_time_pct"] < 20, t
    assert "short of --rate 100" in replay.text(report)
