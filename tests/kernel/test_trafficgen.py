"""trafficgen on real sockets: every type on loopback, the bounds, the target rule, lab containers."""
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from bpfhook import cgroups
from bpfhook.targets import TargetError
from bpfhook.trafficgen import (HTTP_BODY, HTTP_REQUEST, PAYLOAD, TYPES, Server, TrafficError, generate,
                                parse_target, server_in_container)
from tests.conftest import slow_factor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("kind", TYPES)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_every_type_on_loopback(kind, host):
    if kind == "uds" and host == "::1":
        pytest.skip("unix sockets have no address family to vary")
    with Server(kind, host) as server:
        s = generate(kind, server.target, requests=25, duration=10)
    assert (s.requests, s.errors) == (25, 0), s.last_error
    if kind == "http":  # bytes on the wire: the request, and our server's whole response
        assert s.bytes_sent == 25 * len(HTTP_REQUEST.format(path="/", host=server.target, connection="close"))
        assert s.bytes_received % 25 == 0 and s.bytes_received // 25 > len(HTTP_BODY)
    else:
        assert s.bytes_sent == s.bytes_received == 25 * len(PAYLOAD)
    assert s.rate > 0 and f"{kind} {server.target}: 25 requests, 0 errors" in s.line()


class _RawHttp:
    """A TCP server on 127.0.0.1 that reads each request's head, records it, and answers with the
    next of `responses` as given (bytes), then closes: what trafficgen counts is checked
    against what really went over the socket."""

    def __init__(self, responses):
        self.responses, self.requests, self.keep = list(responses), [], 1
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.target = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        responses = iter(self.responses)
        for response in responses:
            conn, _ = self.sock.accept()
            with conn:
                for _ in range(self.keep):
                    request = b""
                    while not request.endswith(b"\r\n\r\n"):
                        byte = conn.recv(1)
                        if not byte:  # (the client gave up: no endless loop on its closed socket)
                            break
                        request += byte
                    if not request:
                        break
                    self.requests.append(request)
                    conn.sendall(response)
                    if b"Connection: close" in request:
                        break
                    response = next(responses, response)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.thread.join(timeout=10)
        self.sock.close()


def test_http_bytes_are_the_bytes_on_the_wire():
    ok = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    redirect = b"HTTP/1.1 301 Moved Permanently\r\nLocation: /x\r\n\r\n"
    with _RawHttp([ok, redirect]) as server:
        s = generate("http", server.target, requests=2)
    assert (s.requests, s.errors) == (2, 0), s.last_error
    assert [r.split(b"\r\n")[0] for r in server.requests] == [b"GET / HTTP/1.1"] * 2
    assert all(f"Host: {server.target}".encode() in r and b"Connection: close" in r for r in server.requests)
    assert s.bytes_sent == sum(map(len, server.requests))
    assert s.bytes_received == len(ok) + len(redirect)


@pytest.mark.parametrize("response, error", [
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", "HTTP 404"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf", "bad HTTP answer: connection closed inside a response (43 bytes)"),
    (b"SSH-2.0-OpenSSH_9.2\r\n", "bad HTTP answer: no HTTP/1.x start line"),
    (b"", "bad HTTP answer: connection closed before a response"),
])
def test_http_answers_that_are_errors(response, error):
    with _RawHttp([response]) as server:
        s = generate("http", server.target, requests=1)
    assert (s.requests, s.errors, s.bytes_sent) == (1, 1, 0) and error in s.last_error


def _accepts(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_http_against_pythons_own_http_server(tmp_path):
    """The README's demo: `python3 -m http.server` serves GET / (its directory listing)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10 * slow_factor()
        while not _accepts(port):
            assert time.monotonic() < deadline and server.poll() is None, "http.server did not start"
            time.sleep(0.05)
        s = generate("http", f"127.0.0.1:{port}", requests=5)
    finally:
        server.kill()
        server.wait()
    assert (s.requests, s.errors) == (5, 0), s.last_error
    assert s.bytes_received > 5 * len(b"HTTP/1.0 200 OK\r\n")


def test_each_request_is_a_new_connection():
    accepted = []
    with Server("tcp") as server:
        original = server.server.process_request
        server.server.process_request = lambda request, addr: (accepted.append(addr), original(request, addr))
        generate("tcp", server.target, requests=5)
    assert len({port for _host, port in accepted}) == 5


def test_the_time_bound_holds_when_the_server_never_answers():
    with socket.socket() as silent:  # the kernel completes handshakes; nobody ever reads or replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(128)
        target = "127.0.0.1:%d" % silent.getsockname()[1]
        start = time.monotonic()
        s = generate("tcp", target, requests=1000, duration=0.6, timeout=0.2)
        elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 1.5
    assert 0 < s.requests < 10 and s.errors == s.requests and "timed out" in s.last_error


def test_refused_requests_are_counted_errors():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connect is refused
        summary = generate("tcp", f"127.0.0.1:{port}", requests=3)
    assert (summary.requests, summary.errors, summary.bytes_sent) == (3, 3, 0)


@pytest.mark.parametrize("kind, target", [("tcp", "10.1.2.3:80"), ("udp", "[2001:db8::1]:53"),
                                          ("uds", "/run/app.sock"), ("http", "@abstract")])
def test_any_target_is_taken(kind, target):
    """Parsed, never contacted: the product sends where its user points it (the tests stay local)."""
    assert str(parse_target(kind, target)) == target


@pytest.mark.parametrize("kind, target, message", [
    ("tcp", "127.0.0.1", "bad target"), ("tcp", "/run/x.sock", "tcp traffic needs HOST:PORT"),
    ("uds", "127.0.0.1:80", "uds traffic needs a Unix socket path")])
def test_bad_targets(kind, target, message):
    with pytest.raises((TargetError, TrafficError), match=message):
        generate(kind, target, requests=1)


def test_keep_alive_and_paths_by_hostname():
    """--keep-alive N requests per connection, --path in turn, to a target named 'localhost'."""
    with _RawHttp([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"] * 5) as server:
        port = server.target.rsplit(":", 1)[1]
        server.keep = 3  # requests read per connection
        s = generate("http", f"localhost:{port}", requests=5, paths=("/a", "/b"), keep_alive=3)
    assert (s.requests, s.errors) == (5, 0), s.last_error
    assert [r.split(b" ")[1] for r in server.requests] == [b"/a", b"/b", b"/a", b"/b", b"/a"]
    assert [b"Connection: close" in r for r in server.requests] == [False, False, True, False, True]


def test_lab_container_by_name(lab):
    c = lab(ipv6=False)
    with server_in_container("tcp", c) as target:
        s = generate("tcp", f"{c.name}:{target.rsplit(':', 1)[1]}", requests=3)
    assert (s.requests, s.errors) == (3, 0), s.last_error


def test_cli_auto_prints_a_summary():
    r = subprocess.run([sys.executable, "-m", "bpfhook", "trafficgen", "--auto", "--type", "udp", "--requests", "7"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30 * slow_factor())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("udp 127.0.0.1:") and ": 7 requests, 0 errors" in r.stdout


@pytest.mark.parametrize("kind", ["http", "tcp", "udp"])
def test_server_inside_a_lab_container(lab, kind):
    c = lab(ipv6=True)
    with server_in_container(kind, c) as target:
        assert target.startswith(c.ipv4 + ":")
        (server_pid,) = c.pids()
        assert cgroups.of_pid(server_pid) == c.cgroup_path
        assert os.stat(f"/proc/{server_pid}/ns/net").st_ino == c.netns_ino
        s = generate(kind, target, requests=10, duration=10)
    assert (s.requests, s.errors) == (10, 0), s.last_error
    assert c.pids() == []  # the server went away with the context
    with server_in_container("tcp", c, ipv6=True) as target:
        assert target.startswith(f"[{c.ipv6}]:")
        assert generate("tcp", target, requests=3).errors == 0


def test_cli_auto_in_a_container(lab):
    c = lab(ipv6=False)
    r = subprocess.run([sys.executable, "-m", "bpfhook", "trafficgen", "--auto", "--type", "tcp", "--requests", "4",
                        "--container", c.name], cwd=ROOT, capture_output=True, text=True, timeout=30 * slow_factor())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"tcp {c.ipv4}:") and ": 4 requests, 0 errors" in r.stdout
