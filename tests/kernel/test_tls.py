"""bpfhook capture --tls against real TLS: a Python ssl HTTPS server in a lab container, curl and
Python clients on the host, wget (GnuTLS) in the container as a client of a server on the host.

tshark (the independent reader) must find the exact request lines and statuses on the right
4-tuples; analyze must list the requests; replay must send them byte for byte to a plain HTTP
server (and, --tls, to the TLS server; h2 by ALPN to nghttpd, which must receive exactly the
captured requests); nothing may be lost or reordered under keep-alive and
connection churn, with bodies of 1 byte, 16 KiB and 1 MiB; SIGKILL of the capture leaves no
uprobe; missing libraries and symbols are one line each."""
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from bpfhook import analyze, flows, pcapng, tls
from bpfhook.lab import Lab
from pybpf.readers import open_reader
from tests import certs, kernel_state, oracles, runtimes
from tests.https_server import SERVER
from tests.conftest import eventually, require

NAME = "tlstest"
PORT = 8443
HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.dirname(os.path.dirname(HERE))
PATTERN = bytes(range(256))


def expected_body(n):
    return (PATTERN * (n // 256 + 1))[:n]


@pytest.fixture(scope="module")
def https(tmp_path_factory):
    """(container, server process, certificate) of the HTTPS server in the lab container."""
    require("uprobe_pmu")
    with contextlib.suppress(Exception):
        Lab.down(NAME)
    c = Lab.up(NAME)
    try:
        directory = str(tmp_path_factory.mktemp("tls"))
        cert, key = certs.self_signed(directory, c.ipv4, c.host_ipv4)
        server = c.spawn([sys.executable, "-c", SERVER, cert, key, "0.0.0.0", str(PORT)], stdout=subprocess.PIPE,
                         text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            yield c, server, cert
        finally:
            server.kill()
            server.wait()
    finally:
        Lab.down(NAME)


def capture(out, *args, container=NAME):
    return subprocess.Popen([sys.executable, "-m", "bpfhook", "capture", "--container", container, "-w", str(out),
                             "--tls", "--quiet", *args], cwd=MAIN, stderr=subprocess.PIPE, text=True)


def wait_started(proc, out, timeout=30):
    """Until the capture says it is capturing (it prints that once everything is attached); the
    lines before it (notes) are kept in proc.notes. A capture stuck past `timeout` is killed."""
    proc.notes = []
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        while line := proc.stderr.readline():
            if line.startswith("capturing "):
                return
            proc.notes.append(line.rstrip("\n"))
    finally:
        watchdog.cancel()
    raise AssertionError(f"capture did not start (exit {proc.wait()}): {proc.notes}")


def stop(proc):
    """SIGINT; the capture's stderr, the lines before "capturing" included."""
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, rest
    return "\n".join(proc.notes + [rest])


class Client:
    """A Python TLS client on one keep-alive connection, sending exact bytes."""

    def __init__(self, host, cert):
        context = ssl.create_default_context(cafile=cert)
        self.sock = context.wrap_socket(socket.create_connection((host, PORT), timeout=20), server_hostname=host)
        self.file = self.sock.makefile("rb")
        self.local = self.sock.getsockname()

    def exchange(self, request):
        """Send `request` as it is; the whole response (head + body)."""
        self.sock.sendall(request)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.file.readline()
            assert line, "connection closed"
            head += line
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        return head + self.file.read(length)

    def close(self):
        self.file.close()
        self.sock.close()


def get(path, host="lab"):
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Test: bpfhook\r\n\r\n".encode()


def post(path, body):
    return f"POST {path} HTTP/1.1\r\nHost: lab\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def tshark(path, *fields, filter=None):
    """tshark's fields; the servers' ports decode as HTTP (tshark otherwise picks a dissector by
    either port: a client's ephemeral port such as 44322 is registered to pmproxy)."""
    argv = [oracles.require("tshark"), "-r", str(path), "-T", "fields", "-E", "separator=|",
            "-d", f"tcp.port=={PORT},http", "-d", "tcp.port==9443,http"]
    argv += [a for f in fields for a in ("-e", f)] + (["-Y", filter] if filter else [])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.splitlines()]


def plaintext_flows(path):
    return [f for f in flows.read(path).flows if f.tls == "plaintext"]


# -- curl and Python on the host, the server in the container -------------------------------------

@pytest.fixture(scope="module")
def basic(https, tmp_path_factory):
    c, server, cert = https
    out = tmp_path_factory.mktemp("basic") / "tls.pcapng"
    proc = capture(out, "--net", "--uds")
    wait_started(proc, out)
    curl = subprocess.run([oracles.require("curl"), "-s", "--http1.1", "--cacert", cert, "-w", "\n%{local_port}",
                           f"https://{c.ipv4}:{PORT}/from-curl?x=1"], capture_output=True, text=True, timeout=30)
    assert curl.returncode == 0, curl.stderr
    body, curl_port = curl.stdout.rsplit("\n", 1)
    assert body == "hello /from-curl?x=1"
    client = Client(c.ipv4, cert)
    request = post("/from-python", b"field=value&other=2")
    response = client.exchange(request)
    client.close()
    time.sleep(0.5)
    stderr = stop(proc)
    return out, int(curl_port), client.local[1], request, response, stderr


def test_tshark_reads_the_exact_requests_on_their_4_tuples(https, basic):
    c, server, _cert = https
    out, curl_port, python_port, request, _response, _stderr = basic
    rows = tshark(out, "http.request.method", "http.request.uri", "http.request.version", "ip.src", "tcp.srcport",
                  "ip.dst", "tcp.dstport", "frame.interface_name", filter="http.request")
    assert [r for r in rows if r[7].endswith(":tls-plaintext")] == rows  # the ciphertext is no HTTP
    assert sorted(r[:7] for r in rows) == sorted([
        ["GET", "/from-curl?x=1", "HTTP/1.1", c.host_ipv4, str(curl_port), c.ipv4, str(PORT)],
        ["POST", "/from-python", "HTTP/1.1", c.host_ipv4, str(python_port), c.ipv4, str(PORT)]])
    statuses = tshark(out, "http.response.code", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport",
                      filter="http.response")
    assert sorted(statuses) == sorted([["200", c.ipv4, str(PORT), c.host_ipv4, str(curl_port)],
                                       ["201", c.ipv4, str(PORT), c.host_ipv4, str(python_port)]])


def test_every_plaintext_packet_names_its_process_and_library(https, basic):
    c, server, _cert = https
    out = basic[0]
    packets = [p for p in pcapng.Reader(out) if isinstance(p, pcapng.Packet) and
               p.interface.name == f"{NAME}:tls-plaintext"]
    assert packets
    for p in packets:
        meta = pcapng.parse_comment(p.comment)
        assert meta["pid"] == str(server.pid) and meta["container"] == NAME and meta["tls"] == "plaintext"
        assert meta["library"].startswith("libssl.so") and meta["cgroup"] == c.cgroup_path
        assert meta["comm"].startswith("python")
    calls = {pcapng.parse_comment(p.comment)["call"] for p in packets}
    assert {"SSL_read_ex", "SSL_write_ex"} <= calls  # Python's ssl module


def test_the_python_exchange_is_whole_in_both_directions(basic):
    out, _curl_port, python_port, request, response, _stderr = basic
    (flow,) = [f for f in plaintext_flows(out) if f.client_addr[1] == python_port]
    assert flow.streams[flows.C2S].data == request and flow.streams[flows.S2C].data == response
    assert flow.problems() == [] and flow.twin  # the ciphertext of the same connection is its twin
    cipher = next(f for f in flows.read(out).flows if f.id == flow.twin)
    assert cipher.tls == "ciphertext" and cipher.streams[flows.C2S].data[:1] == b"\x16"  # a TLS handshake


def test_summary_and_statistics_count_tls(basic):
    out, *_, stderr = basic
    done = next(line for line in stderr.splitlines() if line.startswith("done: "))
    calls = int(re.search(r" tls (\d+) msgs ", done)[1])
    stats = [s for s in pcapng.Reader(out) if isinstance(s, pcapng.Statistics)
             and s.interface.name.endswith(":tls-plaintext")]
    assert stats and stats[-1].dropped == 0 and stats[-1].received == calls >= 4
    # the server maps libssl and the library directory holds it: one file, probed once
    probing = [line for line in stderr.splitlines() if line.startswith("tls: probing ") and "libssl.so" in line]
    assert len(probing) == 1, probing


def test_analyze_lists_the_https_requests(basic):
    r = subprocess.run([sys.executable, "-m", "bpfhook", "analyze", "--json", str(basic[0])], cwd=MAIN,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    http = {(h["method"], h["path"], h["status"]) for h in json.loads(r.stdout)["http"]}
    assert http == {("GET", "/from-curl?x=1", 200), ("POST", "/from-python", 201)}


class Recorder:
    """A plain HTTP server on loopback that records what each connection sent, answering 200."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                conn.settimeout(3)
                data = b""
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(65536):
                        data += chunk
                        if data.endswith(b"\r\n\r\n") or b"field=value" in data:
                            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                self.received.append(data)
                conn.close()

    def close(self):
        self.listener.close()


def test_replay_sends_the_requests_byte_for_byte_to_a_plain_server(basic):
    out, curl_port, python_port, request, _response, _stderr = basic
    recorder = Recorder()
    try:
        r = subprocess.run([sys.executable, "-m", "bpfhook", "replay", str(out), "--to", f"127.0.0.1:{recorder.port}",
                            "--speed", "max", "--json"], cwd=MAIN, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert eventually(lambda: len(recorder.received) == 2, timeout=10)
    finally:
        recorder.close()
    curl_request = next(f for f in plaintext_flows(out) if f.client_addr[1] == curl_port).streams[flows.C2S].data
    assert curl_request.startswith(b"GET /from-curl?x=1 HTTP/1.1\r\n")
    assert sorted(recorder.received) == sorted([curl_request, request])
    replayed = {e["flow"] for e in json.loads(r.stdout)["exchanges"]}
    assert replayed == {f.id for f in plaintext_flows(out)}  # the ciphertext twins are not replayed


def test_replay_tls_to_the_https_server_gets_the_same_answers(https, basic):
    c, _server, cert = https
    out, _curl_port, python_port, *_ = basic
    (flow,) = [f for f in plaintext_flows(out) if f.client_addr[1] == python_port]
    r = subprocess.run([sys.executable, "-m", "bpfhook", "replay", str(out), "--to", f"{c.ipv4}:{PORT}", "--tls",
                        "--ca-file", cert, "--flow", str(flow.id), "--speed", "max"], cwd=MAIN, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 identical, 0 different, 0 errors" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-m", "bpfhook", "replay", str(out), "--to", f"{c.ipv4}:{PORT}", "--tls",
                        "--flow", str(flow.id)], cwd=MAIN, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "certificate verify failed" in r.stdout


def _nghttpd(start, address, root, port, key, cert, log):
    """nghttpd (TLS, h2 by ALPN) serving `root`, its frame log (-v) to `log`; start runs it (the
    lab container's spawn, or the host's Popen)."""
    with open(log, "w") as f:
        return start([oracles.require("nghttpd"), "-v", "-d", str(root), "-a", address, str(port), key, cert],
                     stdout=f, stderr=subprocess.STDOUT)


def _received(log):
    """(:method, :path) of each request stream nghttpd's -v log says it received, in order."""
    fields, seen = {}, []
    for line in open(log, errors="replace"):
        m = re.search(r"recv \(stream_id=(\d+)\) (:method|:path): (\S+)", line)
        if m:
            fields.setdefault(m[1], {})[m[2]] = m[3]
            if len(fields[m[1]]) == 2:
                seen.append((fields[m[1]][":method"], fields[m[1]][":path"]))
    return seen


def _listening(host, port, proc, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        assert proc.poll() is None, "nghttpd exited"
        time.sleep(0.05)
    raise AssertionError(f"nghttpd does not listen on {host}:{port}")


def test_https_h2_plaintext_replays_with_tls_to_an_h2_server(https, tmp_path):
    """nghttpd (h2 over TLS) in the container, nghttp on the host: capture --tls gives the h2
    plaintext, and replay --tls sends it by ALPN h2 to a fresh nghttpd, which receives exactly
    those requests and gives the same answers."""
    c, _server, cert = https
    nghttp = oracles.require("nghttp")
    key = cert[:-len(".crt")] + ".key"
    root = tmp_path / "www"
    root.mkdir()
    (root / "a.json").write_text('{"hello": "world"}\n')
    (root / "big.txt").write_text("".join(f"line {i}\n" for i in range(6000)))  # > 16 KiB: many DATA frames
    in_container = _nghttpd(c.spawn, c.ipv4, root, 9444, key, cert, tmp_path / "captured.log")
    try:
        _listening(c.ipv4, 9444, in_container)
        out = tmp_path / "h2.pcapng"
        proc = capture(out)
        wait_started(proc, out)
        paths = ["/a.json", "/big.txt", "/missing"]
        r = subprocess.run([nghttp, "-n", *(f"https://{c.ipv4}:9444{p}" for p in paths)], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        time.sleep(0.5)
        stop(proc)
    finally:
        in_container.kill()
        in_container.wait()
    sent = _received(tmp_path / "captured.log")
    assert sorted(sent) == sorted(("GET", p) for p in paths)
    port = 9444  # the same port as the captured one: nghttpd's 404 page names it
    fresh = _nghttpd(subprocess.Popen, "127.0.0.1", root, port, key, cert, tmp_path / "replayed.log")
    try:
        _listening("127.0.0.1", port, fresh)
        r = subprocess.run([sys.executable, "-m", "bpfhook", "replay", str(out), "--to", f"127.0.0.1:{port}",
                            "--tls", "--insecure", "--speed", "max", "--json"], cwd=MAIN, capture_output=True,
                           text=True, timeout=120)
    finally:
        fresh.kill()
        fresh.wait()
    assert r.returncode == 0, r.stdout + r.stderr
    assert _received(tmp_path / "replayed.log") == sent
    report = json.loads(r.stdout)
    assert report["summary"] == dict(requests=3, identical=3, different=0, errors=0, uncompared=0), report
    assert {(e["protocol"], e["path"], e["status"]) for e in report["exchanges"]} == {
        ("h2", "/a.json", 200), ("h2", "/big.txt", 200), ("h2", "/missing", 404)}


# -- volume: keep-alive, churn, large bodies ----------------------------------------------------

@pytest.fixture(scope="module")
def stress(https, tmp_path_factory):
    c, server, cert = https
    out = tmp_path_factory.mktemp("stress") / "stress.pcapng"
    proc = capture(out, "--net")
    wait_started(proc, out)
    sent = []  # (client port, [(request, response)]) per connection, in order: ports get reused
    keep = Client(c.ipv4, cert)
    sent.append((keep.local[1], [(req, keep.exchange(req)) for req in (get(f"/seq/{i}") for i in range(1000))]))
    keep.close()
    for i in range(200):
        one = Client(c.ipv4, cert)
        req = get(f"/new/{i}")
        sent.append((one.local[1], [(req, one.exchange(req))]))
        one.close()
    sizes = Client(c.ipv4, cert)
    exchanges = []
    for n in (1, 16384, 1 << 20):
        req = get(f"/bytes/{n}")
        exchanges.append((req, sizes.exchange(req)))
    upload = post("/upload", expected_body(1 << 20))
    exchanges.append((upload, sizes.exchange(upload)))
    sent.append((sizes.local[1], exchanges))
    sizes.close()
    time.sleep(1)
    stop(proc)
    return out, sent


def test_nothing_lost_or_reordered(stress):
    """Every connection's plaintext, both ways, byte for byte, in order (a client port the kernel
    reused for a later connection is a new flow: the new socket got a handshake of its own)."""
    out, sent = stress
    found = plaintext_flows(out)
    assert [f.client_addr[1] for f in found] == [port for port, _ in sent]
    for f, (port, exchanges) in zip(found, sent):
        assert f.problems() == [], (port, f.problems())
        assert f.streams[flows.C2S].data == b"".join(req for req, _ in exchanges), port
        assert f.streams[flows.S2C].data == b"".join(resp for _, resp in exchanges), port
    paths = [h["path"] for h in analyze.http_exchanges(found[0])]
    assert paths == [f"/seq/{i}" for i in range(1000)]
    assert flows.read(out).drops == 0


def test_each_connection_s_packets_before_its_plaintext_come_first_in_the_file(stress):
    """The TLS ring is read after the net one and may run ahead of it: a connection's handshake
    packets, sent before its first plaintext, must still be in the file before the synthesized
    handshake (else tshark starts the connection again at the real SYN and loses the plaintext)."""
    out, _sent = stress
    records = [p for p in pcapng.Reader(out) if isinstance(p, pcapng.Packet)]
    synthesized = {}  # client port -> (file index, ts) of each synthesized SYN
    for i, p in enumerate(records):
        g = flows.parse_packet(pcapng.LINKTYPE_RAW, p.data)
        if p.interface.name.endswith(":tls-plaintext") and g.flags == 0x02:
            synthesized.setdefault(g.sport, []).append((i, p.ts_ns))
    late = []
    for i, p in enumerate(records):
        if p.interface.name.endswith(":net"):
            g = flows.parse_packet(pcapng.LINKTYPE_RAW, p.data)
            port = g.sport if g.dport == PORT else g.dport
            late += [(i, port) for at, ts in synthesized.get(port, ()) if p.ts_ns < ts and i > at]
    assert late == []


def test_large_bodies_arrive_whole(stress):
    out, sent = stress
    port = sent[-1][0]
    flow = plaintext_flows(out)[-1]
    answers = flow.streams[flows.S2C].data
    for n in (1, 16384, 1 << 20):
        assert expected_body(n) in answers
    upload = flow.streams[flows.C2S].data
    assert hashlib.sha256(expected_body(1 << 20)).digest() == hashlib.sha256(upload[-(1 << 20):]).digest()
    rows = tshark(out, "http.response.code", "http.content_length",
                  filter=f"http.response && tcp.dstport == {port} && tcp.stream == {_tcp_stream(out, port)}")
    assert rows == [["200", "1"], ["200", "16384"], ["200", "1048576"], ["201", str(len(b"got 1048576 bytes"))]]


def _tcp_stream(out, port):
    """tshark's stream number of the last plaintext connection from client port `port`."""
    return tshark(out, "tcp.stream", filter=f"tcp.srcport == {port} && tcp.flags.syn == 1 && "
                                            "frame.interface_name contains \"tls-plaintext\"")[-1][0]


def test_tshark_counts_every_request(stress):
    out, sent = stress
    uris = [r[0] for r in tshark(out, "http.request.uri", filter="http.request")]
    assert len(uris) == sum(len(e) for _, e in sent)
    assert [u for u in uris if u.startswith("/seq/")] == [f"/seq/{i}" for i in range(1000)]


# -- the client end in the container (GnuTLS), IPv4 -------------------------------------------------

def test_gnutls_client_in_the_container(https, tmp_path):
    c, _server, _cert = https
    wget = oracles.require("wget")
    cert, key = certs.self_signed(str(tmp_path), c.host_ipv4, name="host")
    host_server = subprocess.Popen([sys.executable, "-c", SERVER, cert, key, c.host_ipv4, "9443"],
                                   stdout=subprocess.PIPE, text=True)
    try:
        assert host_server.stdout.readline().strip() == "ready"
        out = tmp_path / "gnutls.pcapng"
        proc = capture(out, "--net")
        wait_started(proc, out)
        client = c.spawn([wget, "-q", "-O", "-", "--no-check-certificate", f"https://{c.host_ipv4}:9443/from-wget"],
                         stdout=subprocess.PIPE)
        body, _ = client.communicate(timeout=30)
        assert body == b"hello /from-wget"
        time.sleep(0.5)
        stop(proc)
    finally:
        host_server.kill()
        host_server.wait()
    rows = tshark(out, "http.request.uri", "ip.src", "ip.dst", "tcp.dstport", "frame.comment", filter="http.request")
    assert [r[:4] for r in rows] == [["/from-wget", c.ipv4, c.host_ipv4, "9443"]]
    meta = pcapng.parse_comment(rows[0][4])
    assert meta["comm"] == "wget" and meta["library"].startswith("libgnutls.so") and meta["call"] == "gnutls_record_send"
    (flow,) = plaintext_flows(out)
    assert flow.client_addr[0].exploded == c.ipv4  # the container's end is the client: its SYN


# -- nothing left behind, bad input --------------------------------------------------------------

TLS_PROGRAMS = ("tls_enter", "tls_return", "tls_socket")


def _uprobes():
    return kernel_state.uprobes(programs=TLS_PROGRAMS)


def test_sigkill_leaves_no_uprobe(https, tmp_path):
    c, _server, cert = https
    before = _uprobes()
    out = tmp_path / "killed.pcapng"
    proc = capture(out)
    wait_started(proc, out)
    during = _uprobes()
    assert len(during["perf"]) + len(during["uprobe_multi"]) > len(before["perf"]) + len(before["uprobe_multi"])
    assert sorted(set(during["programs"])) == sorted(TLS_PROGRAMS)
    Client(c.ipv4, cert).close()
    proc.kill()
    proc.wait(timeout=10)
    assert eventually(lambda: _uprobes() == before, timeout=10)
    reader = pcapng.Reader(out)
    list(reader)
    assert [i.name for i in reader.interfaces] == [f"{NAME}:tls-plaintext"]  # --tls alone: only TLS


# Run "$@" in a mount namespace of its own where every TLS library file in the library
# directories is covered by /dev/null: a container without TLS libraries on disk.
WITHOUT_TLS_LIBRARIES = r"""
for f in /lib/*/libssl.so* /lib/*/libgnutls.so* /usr/lib/*/libssl.so* /usr/lib/*/libgnutls.so* \
         /lib*/libssl.so* /lib*/libgnutls.so* /usr/lib*/libssl.so* /usr/lib*/libgnutls.so*; do
    if [ -f "$f" ] && [ ! -L "$f" ]; then mount --bind /dev/null "$f" || exit 1; fi
done
exec "$@"
"""


@pytest.fixture
def plain_lab():
    """A container whose process maps no TLS library and sees none on disk (its own mount
    namespace hides them); tests add processes that map impostors."""
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) not installed")
    name = "tlsbad"
    with contextlib.suppress(Exception):
        Lab.down(name)
    c = Lab.up(name)
    procs = []
    try:
        procs.append(c.spawn(["unshare", "--mount", "--propagation", "private", "sh", "-c", WITHOUT_TLS_LIBRARIES,
                              "sh", sys.executable, "-c",
                              "import socket, time\ns = socket.create_server(('0.0.0.0', 8080))\n"
                              "print('ready', flush=True)\nwhile True: s.accept()[0].close()"],
                             stdout=subprocess.PIPE, text=True))
        assert procs[0].stdout.readline().strip() == "ready"
        yield c, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        Lab.down(name)


def test_no_tls_library_one_line_and_the_net_capture_goes_on(plain_lab, tmp_path):
    c, _procs = plain_lab
    out = tmp_path / "plain.pcapng"
    proc = capture(out, "--net", "--uds", container="tlsbad")
    wait_started(proc, out)
    socket.create_connection((c.ipv4, 8080), timeout=5).close()
    time.sleep(0.5)
    stderr = stop(proc)
    notes = [line for line in stderr.splitlines() if line.startswith("tls:")]
    assert len(notes) == 1 and "no TLS library (libssl.so*, libgnutls.so*) in the container's" in notes[0], notes
    assert any(p.interface.name == "tlsbad:net" and p.data[9] == 6 for p in pcapng.Reader(out)
               if isinstance(p, pcapng.Packet))


IMPOSTOR = "import ctypes, sys, time\nctypes.CDLL(sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(600)"


def test_a_library_without_the_symbols_is_named(plain_lab, tmp_path):
    c, procs = plain_lab
    libdir = "/usr/lib/x86_64-linux-gnu" if os.path.isdir("/usr/lib/x86_64-linux-gnu") else "/usr/lib"
    none = tmp_path / "libssl.so.99"  # libz under an OpenSSL name: no SSL_* at all
    shutil.copy(os.path.realpath(os.path.join(libdir, "libz.so.1")), none)
    partial = tmp_path / "libssl.so.98"  # GnuTLS's OpenSSL layer: SSL_read/SSL_write, no _ex calls
    compat = os.path.join(libdir, "libgnutls-openssl.so.27")
    for path in (none,) + ((partial,) if os.path.exists(compat) else ()):
        if path is partial:
            shutil.copy(os.path.realpath(compat), partial)
        procs.append(c.spawn([sys.executable, "-c", IMPOSTOR, str(path)], stdout=subprocess.PIPE, text=True))
        assert procs[-1].stdout.readline().strip() == "ready"
    out = tmp_path / "impostor.pcapng"
    proc = capture(out, container="tlsbad")
    wait_started(proc, out)
    stderr = stop(proc)
    notes = [line for line in stderr.splitlines() if line.startswith("tls:")]
    assert f"tls: {none} (pid {procs[1].pid}) exports none of SSL_read, SSL_write, SSL_read_ex, SSL_write_ex: " \
           "not probed" in notes
    if os.path.exists(compat):
        assert f"tls: {partial} (pid {procs[2].pid}) lacks SSL_read_ex, SSL_write_ex; probing SSL_read, " \
               "SSL_write" in notes


def test_without_uprobes_capture_tls_refuses_in_one_line(tmp_path, https):
    """No uprobe PMU (faked: the probe reads a PMU directory that does not exist): one line, exit 1,
    no file, nothing attached."""
    out = tmp_path / "nopmu.pcapng"
    before = _uprobes()
    code = ("import sys; from pybpf import pmu; pmu.UPROBE_PMU = '/sys/bus/event_source/devices/no-uprobe-pmu'; "
            "from bpfhook.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "capture", "--container", NAME, "--tls", "-w", str(out),
                        "--duration", "1"], cwd=MAIN, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--tls needs uprobes" in r.stderr and "no-uprobe-pmu" in r.stderr
    assert not out.exists()
    assert _uprobes() == before


# -- the hooks alone: uprobe_multi links, and perf-event uprobes (kernels without them) ------------

@pytest.mark.parametrize("multi", [True, False], ids=["uprobe_multi", "perf_event"])
def test_hooks_give_the_plaintext(https, multi):
    """bpfhook.tls without the capture: the hooks, the ring buffer and Plaintext give the exact
    exchange as packets, through either way of attaching."""

    if multi:
        require("link.uprobe_multi")
    c, server, cert = https
    packets, notes = [], []
    hooks = tls.TlsHooks(c.cgroup_dir, c.pids, notes.append, multi=multi)
    try:
        plain = tls.Plaintext(lambda ts, packet, comment, inbound: packets.append((packet, inbound)),
                              lambda ev: "x")
        with hooks.attach(), open_reader(hooks.events, callback=plain.record) as reader:
            client = Client(c.ipv4, cert)
            request, body = get("/hooks"), expected_body(100000)
            response = client.exchange(request) + client.exchange(post("/hooks", body))
            client.close()
            assert eventually(lambda: reader.read(0.1) is not None and plain.bytes >= len(response) + len(body),
                              timeout=5)
        stats = hooks.stats()
    finally:
        hooks.close()
    segments = [flows.parse_packet(pcapng.LINKTYPE_RAW, p) for p, _ in packets]
    assert [g.flags for g in segments[:3]] == [0x02, 0x12, 0x10]
    assert str(segments[0].src) == c.host_ipv4 and (str(segments[0].dst), segments[0].dport) == (c.ipv4, PORT)
    sent = b"".join(g.payload for g in segments if (str(g.src), g.sport) != (c.ipv4, PORT))
    answered = b"".join(g.payload for g in segments if (str(g.src), g.sport) == (c.ipv4, PORT))
    assert sent == request + post("/hooks", body) and answered == response
    assert [inbound for (_, inbound), g in zip(packets, segments) if g.payload] == \
        [(str(g.src), g.sport) != (c.ipv4, PORT) for g in segments if g.payload]
    assert stats["lost"] == stats["faults"] == stats["truncated"] == 0 and stats["calls"] >= 4
    kind = "uprobe_multi links" if multi else "perf-event uprobes"
    assert notes and all(note.startswith("tls: probing ") and note.endswith(f"; {kind})") for note in notes)


def test_a_read_in_flight_at_attach_is_the_one_call_missed_and_it_is_counted(https):
    """A keep-alive connection idle in SSL_read_ex when the probes attach: that read entered before
    any probe, so no uprobe sees it return; its request is the one missing (the benchmark's lost
    request a phase), the server's answer comes first and is counted, and every later call is whole."""
    c, server, cert = https
    packets = []
    hooks = tls.TlsHooks(c.cgroup_dir, c.pids, lambda note: None)
    client = Client(c.ipv4, cert)
    try:
        client.exchange(get("/before"))  # the server's thread now waits in SSL_read_ex
        plain = tls.Plaintext(lambda ts, packet, comment, inbound: packets.append(packet), lambda ev: "x")
        with hooks.attach(), open_reader(hooks.events, callback=plain.record) as reader:
            first = client.exchange(get("/in-flight"))
            second = client.exchange(get("/after"))
            assert eventually(lambda: reader.read(0.1) is not None and plain.calls >= 4, timeout=5)
    finally:
        client.close()
        hooks.close()
    segments = [flows.parse_packet(pcapng.LINKTYPE_RAW, p) for p in packets]
    sent = b"".join(g.payload for g in segments if (str(g.src), g.sport) != (c.ipv4, PORT))
    answered = b"".join(g.payload for g in segments if (str(g.src), g.sport) == (c.ipv4, PORT))
    assert sent == get("/after") and answered == first + second
    assert plain.server_first == 1


# -- a Docker container --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker():
    """A Docker engine through tests/runtimes.py: dockerd started only when none answers, the
    host's firewall, bridges and cgroups put back as found afterwards."""
    require("uprobe_pmu")
    with runtimes.docker_engine() as engine:
        yield engine


def test_docker_container_https_server(docker, tmp_path):
    """The HTTPS server in a Docker container (an empty imported image, the host's /usr, /lib,
    /etc bind-mounted read-only, Debian's /usr/bin/python3): `capture --tls --container NAME`
    finds its libssl through the container's process (/proc/PID/root), probes it, keeps only the
    container's calls (the host's Python client uses the same file) and writes its plaintext on
    the container's addresses; nothing stays attached after the capture."""
    engine = docker
    name = f"bpfhook-tls-{os.getpid()}"
    cert, key = certs.self_signed(str(tmp_path), "127.0.0.1")
    tmp_path.chmod(0o755)
    mounts = [flag for d in runtimes.HOST_DIRS if os.path.exists(d) for flag in ("-v", f"{d}:{d}:ro")]
    engine.made.append(name)
    cid = engine("run", "-d", "--name", name, *mounts, "-v", f"{tmp_path}:{tmp_path}:ro", runtimes.IMAGE,
                 "/usr/bin/python3", "-c", SERVER, cert, key, "0.0.0.0", str(PORT)).stdout.strip()
    info = json.loads(engine("inspect", cid).stdout)[0]
    ip, server_pid = info["NetworkSettings"]["IPAddress"], info["State"]["Pid"]
    assert eventually(lambda: engine("logs", cid).stdout.startswith("ready"), timeout=30)
    before = _uprobes()
    out = tmp_path / "docker.pcapng"
    proc = capture(out, container=name)
    wait_started(proc, out)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the certificate names 127.0.0.1
    with context.wrap_socket(socket.create_connection((ip, PORT), timeout=10)) as s:
        local = s.getsockname()
        s.sendall(get("/from-docker"))
        answer = b""
        while b"hello /from-docker" not in answer and (chunk := s.recv(65536)):  # head, then body
            answer += chunk
        assert answer.endswith(b"hello /from-docker")
    time.sleep(0.5)
    stderr = stop(proc)
    assert _uprobes() == before
    rows = tshark(out, "http.request.uri", "ip.src", "tcp.srcport", "ip.dst", "tcp.dstport", "frame.comment",
                  filter="http.request")
    assert [r[:5] for r in rows] == [["/from-docker", local[0], str(local[1]), ip, str(PORT)]]
    meta = pcapng.parse_comment(rows[0][5])
    assert meta["pid"] == str(server_pid) and meta["library"].startswith("libssl.so")
    assert meta["container"] == name and meta["tls"] == "plaintext"
    statuses = tshark(out, "http.response.code", "ip.src", "tcp.srcport", filter="http.response")
    assert statuses == [["200", ip, str(PORT)]]
    probed = [line.split()[2] for line in stderr.splitlines() if line.startswith("tls: probing ")]
    libssl = next(path for path in probed if os.path.basename(path).startswith("libssl.so"))
    assert os.path.samefile(f"/proc/{server_pid}/root{libssl}", "/usr/lib/x86_64-linux-gnu/libssl.so.3"), stderr
