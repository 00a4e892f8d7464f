"""TLS plaintext in analyze and replay, without the kernel: a file holding a connection's
ciphertext (as capture's net interface writes it) and its plaintext (as capture --tls writes
it) on the same addresses. analyze lists the HTTP once; replay sends the plaintext, to a plain
server or (--tls) inside TLS to a loopback TLS server, checking its certificate unless
--insecure."""
import ipaddress
import random
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from bpfhook import analyze, flows, pcapng, replay, synth
from tests import certs

REQUEST = b"POST /api/items HTTP/1.1\r\nHost: lab\r\nContent-Length: 5\r\n\r\nhello"
RESPONSE = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
CLIENT, SERVER = ("10.77.9.1", 40000), ("10.77.9.2", 8443)


@pytest.fixture
def capture_file(tmp_path):
    """Ciphertext on interface 0, its plaintext on interface 1, interleaved as a capture writes them."""
    client = (ipaddress.ip_address(CLIENT[0]), CLIENT[1])
    server = (ipaddress.ip_address(SERVER[0]), SERVER[1])
    wire = synth.Connection(client, server, random.Random(5))
    plain = synth.Connection(client, server, random.Random(6))
    wire_packets = [p for _, p in wire.handshake() + wire.data(True, 1, 40, 0, b"\x16\x03\x01" + bytes(37))
                    + wire.data(False, 2, 50, 0, b"\x16\x03\x03" + bytes(47))
                    + wire.data(True, 3, 60, 0, b"\x17\x03\x03" + bytes(57))]
    plain_packets = [p for _, p in plain.handshake() + plain.data(True, 1, len(REQUEST), 0, REQUEST)
                     + plain.data(False, 2, len(RESPONSE), 0, RESPONSE)]
    path = tmp_path / "tls.pcapng"
    with pcapng.Writer(path) as w:
        net = w.interface(pcapng.LINKTYPE_RAW, "web:net")
        tls = w.interface(pcapng.LINKTYPE_RAW, "web:tls-plaintext")
        ts = 1_700_000_000_000_000_000
        for i, packet in enumerate(wire_packets):
            w.packet(net, ts + i * 10, packet, comment="pid=7 comm=srv cgroup=/x container=web")
        for i, packet in enumerate(plain_packets):
            w.packet(tls, ts + i * 10 + 5, packet,
                     comment="pid=7 comm=srv cgroup=/x container=web library=libssl.so.3 tls=plaintext")
    return path


def test_plaintext_and_ciphertext_are_two_flows_paired(capture_file):
    cap = flows.read(capture_file)
    cipher, plain = sorted(cap.flows, key=lambda f: f.tls)
    assert (cipher.tls, plain.tls) == ("ciphertext", "plaintext")
    assert (cipher.twin, plain.twin) == (plain.id, cipher.id)
    assert [m.data for m in plain.messages] == [REQUEST, RESPONSE]
    assert plain.problems() == [] and plain.meta["pid"] == "7"


def test_analyze_lists_the_request_once(capture_file):
    r = analyze.report(capture_file)
    assert [(h["method"], h["path"], h["status"]) for h in r["http"]] == [("POST", "/api/items", 201)]
    text = analyze.text(r, 10)
    assert "TLS plaintext (capture --tls)" in text and "its plaintext is flow" in text


def serve(context, answer, count=1):
    """A loopback server (TLS when context is given) answering each connection once; (port, thread, got)."""
    listener = socket.create_server(("127.0.0.1", 0))
    got = []

    def run():
        with listener:
            for _ in range(count):
                conn, _ = listener.accept()
                try:
                    if context is not None:
                        conn = context.wrap_socket(conn, server_side=True)
                    conn.settimeout(5)
                    data = b""
                    while len(data) < len(REQUEST):
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    got.append(data)
                    conn.sendall(answer)
                except (OSError, ssl.SSLError) as e:
                    got.append(e)
                finally:
                    conn.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, got


def _exchanges(capture_file, to, tls=None):
    report = replay.replay(capture_file, to, opts=replay.Options(speed=None, timeout=10, tls=tls))
    return [(e["flow"], e["outcome"], e["error"]) for e in report["exchanges"]]


def test_replay_sends_the_plaintext_to_a_plain_server(capture_file):
    plain = next(f for f in flows.read(capture_file).flows if f.tls == "plaintext")
    port, thread, got = serve(None, RESPONSE)
    exchanges = _exchanges(capture_file, f"127.0.0.1:{port}")
    thread.join(10)
    assert exchanges == [(plain.id, "identical", None)]  # the ciphertext twin is left out
    assert got == [REQUEST]


@pytest.fixture
def tls_server_context(tmp_path):
    cert, key = certs.self_signed(str(tmp_path), "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def test_replay_tls_checks_the_certificate(capture_file, tls_server_context):
    context, cert = tls_server_context
    port, thread, got = serve(context, RESPONSE, count=3)
    to = f"127.0.0.1:{port}"
    ((_, outcome, error),) = _exchanges(capture_file, to, replay.Tls())
    assert outcome == "error" and "certificate verify failed" in error and "--insecure" in error
    ((_, trusted, _),) = _exchanges(capture_file, to, replay.Tls(ca_file=cert))
    ((_, insecure, _),) = _exchanges(capture_file, to, replay.Tls(insecure=True))
    thread.join(10)
    assert trusted == insecure == "identical"
    assert got[1:] == [REQUEST, REQUEST]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bpfhook", "replay", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_bad_tls_options_one_line(capture_file, tmp_path):
    for args, message in ((("--insecure",), "--insecure and --ca-file go with --tls"),
                          (("--tls", "--ca-file", str(tmp_path / "none.pem")), "--ca-file"),):
        r = run_cli(str(capture_file), "--to", "127.0.0.1:9", *args)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    r = run_cli(str(capture_file), "--to", "/tmp/x.sock", "--tls")
    assert r.returncode != 0 and "--tls replays to TCP servers" in r.stderr
