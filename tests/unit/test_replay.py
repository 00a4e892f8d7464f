"""replay against loopback servers (no root; tests/kernel replays real captures): HTTP diffs,
pipelining, header edits, --map, raw streams and datagrams, timing, the CLI and its errors."""
import json
import socket
import subprocess
import sys
import threading

import pytest

from bpfhook import http1, replay
from tests import httpserver
from tests.conftest import ROOT
from tests.pcapfiles import CLIENT, SERVER, conversation, udp, write

PATHS = ["/health", "/users/1", "/items", "/users/2", "/static.txt"]


@pytest.fixture
def server():
    """The test HTTP server on 127.0.0.1, in this process (its .variant can be switched)."""
    srv = httpserver.Server(("127.0.0.1", 0))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def ask(port, requests):
    """The server's answers, as bytes, to requests sent on one connection."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        reader = http1.ResponseReader()
        for r in requests:
            s.sendall(r)
            while (m := reader.next_response()) is None:
                reader.feed(s.recv(65536))
            out.append(m.raw)
    return out


def get(path, extra=b""):
    return b"GET %s HTTP/1.1\r\nHost: shop\r\nUser-Agent: t\r\n%s\r\n" % (path.encode(), extra)


def http_capture(path, port, conns, gap_ms=20, pipelined=False):
    """A capture of `conns` (lists of request bytes, one list per connection) and the server's real answers."""
    pkts, t = [], 0
    for n, requests in enumerate(conns):
        answers = ask(port, requests)
        turns = []
        for q, a in zip(requests, answers):
            turns += [(t + 5, "c", q)] if not pipelined else [(t + 5 + len(turns) * 0.01, "c", q)]
            t += gap_ms
        if pipelined:
            turns += [(t + 1, "s", b"".join(answers))]
        else:
            turns = [x for pair in zip(turns, [(ts + 2, "s", a) for (ts, _c, _q), a in zip(turns, answers)])
                     for x in pair]
        client = (CLIENT[0], CLIENT[1] + n)
        pkts += conversation(client, SERVER, turns, isn_c=1000 + n * 7919, start_ms=turns[0][0] - 3)
    return write(path, pkts)


def test_same_server_no_difference_then_variant_exactly_two(tmp_path, server):
    port = server.server_address[1]
    path = http_capture(tmp_path / "h.pcapng", port, [[get(p) for p in PATHS], [get("/users/1"), get("/health")]])
    report = replay.replay(path, f"127.0.0.1:{port}", opts=replay.Options(speed=4))
    assert report["summary"] == dict(requests=7, identical=7, different=0, errors=0, uncompared=0), report
    server.variant = True
    report = replay.replay(path, f"127.0.0.1:{port}", opts=replay.Options(speed=None))
    bad = [(e["flow"], e["path"], e["differences"]) for e in report["exchanges"] if e["outcome"] != "identical"]
    assert bad == [(1, "/health", ["status 200 -> 503"]),
                   (1, "/users/1", ["body (JSON) differs", '  $.roles[0]: "admin" -> "dev"', "  $.roles: 2 items -> 1"]),
                   (2, "/users/1", ["body (JSON) differs", '  $.roles[0]: "admin" -> "dev"', "  $.roles: 2 items -> 1"]),
                   (2, "/health", ["status 200 -> 503"])]
    rows = {r["path"]: (r["requests"], r["identical"], r["different"]) for r in report["paths"]}
    assert rows == {"GET /health": (2, 0, 2), "GET /users/1": (2, 0, 2), "GET /items": (1, 1, 0),
                    "GET /users/2": (1, 1, 0), "GET /static.txt": (1, 1, 0)}


def test_pipelined_requests_go_out_before_the_answers(tmp_path, server):
    """Captured pipelined, replayed pipelined: a server that answers only once it holds all five
    requests answers them (a replay waiting for each answer first would time out)."""
    port = server.server_address[1]
    path = http_capture(tmp_path / "p.pcapng", port, [[get(p) for p in PATHS]], pipelined=True)
    answers = ask(port, [get(p) for p in PATHS])
    batch = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = batch.accept()
        with conn:
            got = b""
            while got.count(b"\r\n\r\n") < len(PATHS):
                got += conn.recv(65536)
            conn.sendall(b"".join(answers))
    threading.Thread(target=serve, daemon=True).start()
    with batch:
        report = replay.replay(path, "127.0.0.1:%d" % batch.getsockname()[1],
                               opts=replay.Options(speed=None, response_timeout=2))
    assert report["summary"]["identical"] == 5, report["exchanges"]
    assert [e["path"] for e in report["exchanges"]] == PATHS


class Recorder:
    """A TCP server on loopback that records each connection's bytes and answers every request
    head with a fixed response (requests without a body only)."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.got = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn):
        buf = bytearray()
        self.got.append(buf)
        with conn:
            while data := conn.recv(65536):
                buf += data
                conn.sendall(self.ANSWER * data.count(b"\r\n\r\n"))

    def close(self):
        self.sock.close()


def test_header_edits_and_byte_rewrites_reach_the_server(tmp_path):
    rec = Recorder()
    try:
        q = get("/a", b"Cookie: secret\r\nX-Env: prod\r\n")
        path = write(tmp_path / "e.pcapng", conversation(CLIENT, SERVER, [(5, "c", q), (6, "s", Recorder.ANSWER)]))
        opts = replay.Options(speed=None, edits=http1.Edits("staging.local", (("X-Env", "test"), ("X-Replay", "1")),
                                                             ("cookie",)),
                              rewrites=(replay.parse_rewrite("/a=/b"),))
        report = replay.replay(path, f"127.0.0.1:{rec.port}", opts=opts)
    finally:
        rec.close()
    assert report["summary"]["identical"] == 1
    assert bytes(rec.got[0]) == (b"GET /b HTTP/1.1\r\nHost: staging.local\r\nUser-Agent: t\r\nX-Env: test\r\n"
                                 b"X-Replay: 1\r\n\r\n")


def test_map_sends_each_original_destination_to_its_own_target(tmp_path):
    a, b = Recorder(), Recorder()
    other = ("10.77.1.3", 9090)
    try:
        pkts = conversation(CLIENT, SERVER, [(5, "c", get("/to-a")), (6, "s", Recorder.ANSWER)])
        pkts += conversation((CLIENT[0], 40001), other, [(15, "c", get("/to-b")), (16, "s", Recorder.ANSWER)],
                             start_ms=10)
        path = write(tmp_path / "m.pcapng", pkts)
        report = replay.replay(path, f"127.0.0.1:{a.port}", maps=[f"10.77.1.3:9090=localhost:{b.port}"],
                               opts=replay.Options(speed=None))
        only_map = replay.replay(path, None, maps=[f"10.77.1.3:9090=127.0.0.1:{b.port}"],
                                 opts=replay.Options(speed=None))
    finally:
        a.close()
        b.close()
    assert report["summary"]["identical"] == 2 and only_map["summary"]["requests"] == 1
    assert [bytes(g).split(b" ")[1] for g in a.got] == [b"/to-a"]
    assert [bytes(g).split(b" ")[1] for g in b.got] == [b"/to-b", b"/to-b"]


def test_raw_stream_compares_bytes(tmp_path):
    srv = socket.create_server(("127.0.0.1", 0))

    def echo_upper():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data.upper())
    threading.Thread(target=echo_upper, daemon=True).start()
    turns = [(5, "c", b"hello"), (6, "s", b"HELLO"), (10, "c", b"bye\x00"), (11, "s", b"bye\x00")]
    path = write(tmp_path / "r.pcapng", conversation(CLIENT, SERVER, turns))
    with srv:
        report = replay.replay(path, "127.0.0.1:%d" % srv.getsockname()[1], opts=replay.Options(speed=None))
    (e,) = report["exchanges"]
    assert (e["protocol"], e["outcome"]) == ("bytes", "different")
    assert e["differences"][0] == "answer differs (9 B -> 9 B)"
    assert "first difference at byte 5" in e["differences"][1]


def test_udp_datagrams_in_captured_timing(tmp_path):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    got = []

    def serve():
        for _ in range(2):
            data, peer = srv.recvfrom(65536)
            got.append(data)
            srv.sendto(b"pong:" + data, peer)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    pkts = [(0, udp(CLIENT, SERVER, b"a")), (1, udp(SERVER, CLIENT, b"pong:a")),
            (200, udp(CLIENT, SERVER, b"b")), (201, udp(SERVER, CLIENT, b"pong:b"))]
    with srv:
        report = replay.replay(write(tmp_path / "u.pcapng", pkts), "127.0.0.1:%d" % srv.getsockname()[1])
        thread.join(5)
    (e,) = report["exchanges"]
    assert got == [b"a", b"b"] and e["outcome"] == "identical" and e["protocol"] == "datagrams"
    assert report["timing"]["elapsed_s"] >= 0.2


def test_timing_follows_the_capture_across_flows(tmp_path, server):
    """Flows start at their captured offsets: the gap error is small against a quick local server."""
    port = server.server_address[1]
    conns = [[get("/health")] for _ in range(6)]
    path = http_capture(tmp_path / "t.pcapng", port, conns, gap_ms=30)
    report = replay.replay(path, f"127.0.0.1:{port}", opts=replay.Options(speed=1))
    t = report["timing"]
    assert report["summary"]["identical"] == 6 and t["sent"] == 6
    assert 0.15 <= t["elapsed_s"] < 2 and t["gap_error_ms"]["p99"] < 15, t


def bpfhook(*argv):
    return subprocess.run([sys.executable, "-m", "bpfhook", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cli_json_and_fail_on_diff(tmp_path, server):
    port = server.server_address[1]
    path = http_capture(tmp_path / "h.pcapng", port, [[get("/health"), get("/users/2")]])
    r = bpfhook("replay", path, "--to", f"127.0.0.1:{port}", "--speed", "max", "--fail-on-diff")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 identical, 0 different, 0 errors" in r.stdout and "GET /users/2" in r.stdout
    server.variant = True
    r = bpfhook("replay", path, "--to", f"127.0.0.1:{port}", "--speed", "max")
    assert r.returncode == 0 and "flow 1 GET /health\n  status 200 -> 503" in r.stdout
    r = bpfhook("replay", path, "--to", f"127.0.0.1:{port}", "--speed", "max", "--fail-on-diff", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert [(e["path"], e["outcome"]) for e in doc["exchanges"]] == [("/health", "different"),
                                                                    ("/users/2", "identical")]
    assert doc["summary"]["different"] == 1 and doc["targets"] == [f"127.0.0.1:{port}"]


def test_cli_errors_are_one_line(tmp_path, server):
    path = http_capture(tmp_path / "h.pcapng", server.server_address[1], [[get("/health")]])
    for argv, message in ((["--to", "127.0.0.1"], "bad --to"), (["--to", "127.0.0.1:9", "--flow", "9"], "no flow 9"),
                          (["--to", "127.0.0.1:9", "--speed", "0"], "bad --speed"),
                          (["--to", "127.0.0.1:9", "--rewrite", "=x"], "bad --rewrite"),
                          (["--to", "127.0.0.1:9", "--header", "nocolon"], "bad --header"),
                          (["--to", "127.0.0.1:9", "--rate", "-1"], "bad --rate"),
                          (["--to", "127.0.0.1:9", "--concurrency", "0"], "bad --concurrency"),
                          (["--map", "127.0.0.1:9"], "bad --map"), ([], "nowhere to replay"),
                          (["--to", "/nonexistent/sock", "--flow", "1"], "cannot be replayed")):
        r = bpfhook("replay", path, *argv)
        assert r.returncode == 1 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (argv, r.stderr)
    r = bpfhook("replay", path, "--to", "127.0.0.1:9", "--rate", "5", "--speed", "2")
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_connection_refused_is_an_error_result(tmp_path, server):
    path = http_capture(tmp_path / "h.pcapng", server.server_address[1], [[get("/health")]])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        r = bpfhook("replay", path, "--to", "127.0.0.1:%d" % s.getsockname()[1], "--speed", "max", "--json")
    assert r.returncode == 1
    (e,) = json.loads(r.stdout)["exchanges"]
    assert e["outcome"] == "error" and "refused" in e["error"]


def test_a_cut_http_request_is_replayed_as_bytes(tmp_path):
    rec = Recorder()
    try:
        cut = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly part"
        path = write(tmp_path / "c.pcapng", conversation(CLIENT, SERVER, [(5, "c", cut)]))
        report = replay.replay(path, f"127.0.0.1:{rec.port}", opts=replay.Options(speed=None))
    finally:
        rec.close()
    (e,) = report["exchanges"]
    assert (e["protocol"], e["outcome"], e["sent_bytes"]) == ("bytes", "uncompared", len(cut))
    assert bytes(rec.got[0]) == cut
