"""bpfhook.tls against real TLS: a Python ssl HTTPS server in a lab container, a Python client on
the host; the hooks (uprobe_multi links, or perf-event uprobes) give the exact exchange as
packets on the connection's addresses."""
import contextlib
import os
import socket
import ssl
import subprocess
import sys

import pytest

from bpfhook import flows, pcapng
from bpfhook.lab import Lab
from tests import certs
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


# -- the hooks alone: uprobe_multi links, and perf-event uprobes (kernels without them) ------------

@pytest.mark.parametrize("multi", [True, False], ids=["uprobe_multi", "perf_event"])
def test_hooks_give_the_plaintext(https, multi):
    """bpfhook.tls without the capture: the hooks, the ring buffer and Plaintext give the exact
    exchange as packets, through either way of attaching."""
    from bpfhook import tls
    from pybpf.events import open_reader

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
