"""bpfhook analyze on synthetic captures: HTTP exchanges (keep-alive, chunked, out of order,
retransmitted), totals per talker/process/container, JSON, bad files."""
import json
import os
import subprocess
import sys

from bpfhook import analyze, flows

from tests.pcapfiles import CLIENT, SERVER, handshake, tcp, udp, write

MAIN = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQ1 = b"GET /index.html HTTP/1.1\r\nHost: lab\r\n\r\n"
REQ2 = b"POST /api/items?x=1 HTTP/1.1\r\nHost: lab\r\nContent-Length: 5\r\n\r\nhello"
RESP1 = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
RESP2 = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n0\r\n\r\n")


def http_capture(path):
    c, s = 1001, 5001
    pkts = handshake() + [
        (10, tcp(CLIENT, SERVER, c, REQ1)),
        (25, tcp(SERVER, CLIENT, s, RESP1)),
        # the second request arrives in two segments, the later one first, then again (retransmitted)
        (40, tcp(CLIENT, SERVER, c + len(REQ1) + 10, REQ2[10:])),
        (41, tcp(CLIENT, SERVER, c + len(REQ1), REQ2[:10])),
        (42, tcp(CLIENT, SERVER, c + len(REQ1), REQ2[:10])),
        (48, tcp(SERVER, CLIENT, s + len(RESP1), RESP2)),
        (50, udp(("10.77.1.9", 3000), SERVER, b"x" * 100)),
    ]
    write(path, pkts, comment="pid=7 comm=srv cgroup=/lab/web container=web")
    return str(path)


def test_http_requests_with_status_and_latency(tmp_path):
    r = analyze.report(http_capture(tmp_path / "h.pcapng"))
    assert [(h["flow"], h["method"], h["path"], h["status"]) for h in r["http"]] == [
        (1, "GET", "/index.html", 200), (1, "POST", "/api/items?x=1", 201)]
    assert r["http"][0]["latency_ms"] == 15.0
    assert r["http"][1]["latency_ms"] == 7.0  # from the end of the request (41 ms) to the response (48 ms)
    tcp_flow, udp_flow = r["flows"]
    assert tcp_flow["bytes"]["c2s"] == len(REQ1) + len(REQ2) + 10  # retransmitted bytes count as seen
    assert any("1 retransmission" in p for p in tcp_flow["problems"])
    assert any("out of order" in p for p in tcp_flow["problems"])
    assert udp_flow["kind"] == "udp" and udp_flow["bytes"] == {"c2s": 100, "s2c": 0}
    assert [t["client"] for t in r["top_talkers"]] == ["10.77.1.1", "10.77.1.9"]
    assert r["processes"] == [{"process": "7/srv", "bytes": len(REQ1) + len(REQ2) + 10 + len(RESP1) + len(RESP2)
                               + 100, "packets": 10, "flows": 2}]
    assert r["containers"][0]["container"] == "web"


def test_requests_without_responses_and_top(tmp_path):
    pkts = handshake() + [(10, tcp(CLIENT, SERVER, 1001, REQ1))]  # an ingress-only capture
    pkts += [(20 + i, udp(("10.77.1.%d" % (10 + i), 999), SERVER, b"y" * (i + 1))) for i in range(5)]
    r = analyze.report(write(tmp_path / "f.pcapng", pkts), top=2)
    assert r["http"] == [dict(flow=1, method="GET", path="/index.html", status=None, latency_ms=None)]
    assert len(r["top_talkers"]) == 2 and r["top_talkers"][0]["client"] == "10.77.1.1"


def test_no_http_in_a_gap_or_in_binary(tmp_path):
    pkts = handshake() + [(10, tcp(CLIENT, SERVER, 1001 + 5, REQ1[5:]))]  # the start is missing
    pkts += [(20, tcp(CLIENT, SERVER, 1001 + len(REQ1), b"\x16\x03\x01 binary"))]
    assert analyze.report(write(tmp_path / "f.pcapng", pkts))["http"] == []


def test_unix_socket_http(tmp_path):
    path = b"/run/docker.sock"
    pkts = [(0, (1, 1, 7, 7, 9, 4, path, b"", b"GET /v1.43/containers/json HTTP/1.1\r\nHost: d\r\n\r\n")),
            (3, (0, 1, 7, 7, 9, 4, path, b"", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]"))]
    r = analyze.report(write(tmp_path / "f.pcapng", pkts))
    assert r["flows"][0]["kind"] == "unix-stream" and r["flows"][0]["server"] == "/run/docker.sock (pid 7)"
    assert [(h["method"], h["path"], h["status"], h["latency_ms"]) for h in r["http"]] == [
        ("GET", "/v1.43/containers/json", 200, 3.0)]


def bpfhook(*argv):
    return subprocess.run([sys.executable, "-m", "bpfhook", *argv], cwd=MAIN, capture_output=True, text=True,
                          timeout=60)


def test_cli_text_and_json(tmp_path):
    path = http_capture(tmp_path / "h.pcapng")
    r = bpfhook("analyze", path)
    assert r.returncode == 0, r.stderr
    assert "POST    /api/items?x=1  201     7.0 ms" in r.stdout and "10.77.1.1:40000 -> 10.77.1.2:8080" in r.stdout
    r = bpfhook("analyze", path, "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    assert doc["http"][0]["path"] == "/index.html" and len(doc["flows"]) == 2


def test_cli_bad_file_one_line(tmp_path):
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"\0" * 100)
    for path in (bad, tmp_path / "missing.pcapng"):
        r = bpfhook("analyze", str(path))
        assert r.returncode == 1 and r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1 and "error" in r.stderr


def test_torn_tail_is_reported(tmp_path):
    path = http_capture(tmp_path / "h.pcapng")
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) - 7)
    r = analyze.report(path)
    assert r["torn_tail_bytes"] > 0 and r["http"][0]["status"] == 200
    assert flows.read(path).truncated == r["torn_tail_bytes"]
