"""UDP and Unix-socket datagram replay end to end: a lab container's servers are captured, the
datagrams replayed to fresh servers on this machine compare equal, and to changed servers differ."""
import socket
import sys
import time

from bpfhook import replay
from tests.capturing import capture, server

SERVER = r"""
import os, select, socket, sys, threading
host, port, path, upper = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "upper"

def serve(s):  # select first: a recv already blocked when the capture attaches is not seen
    while True:
        select.select([s], [], [])
        data, peer = s.recvfrom(65536)
        s.sendto(b"ans:" + (data.upper() if upper else data), peer)

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((host, port))
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
d.bind(path)
for s in (u, d):
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print(u.getsockname()[1], flush=True)
sys.stdin.read()
"""
UDP_SENT = [b"alpha", b"beta\x00\x01", b"gamma"]
UNIX_SENT = [b"one", b"two"]


def datagram_servers(host, port, path, mode, spawn=None):
    kw = {"spawn": spawn} if spawn else {}
    return server([sys.executable, "-c", SERVER, host, str(port), str(path), mode], **kw)


def exchange(sock, address, messages):
    for m in messages:
        sock.sendto(m, address)
        assert sock.recv(65536) == b"ans:" + m.upper()
        time.sleep(0.05)


def test_udp_and_unix_datagrams(lab, tmp_path):
    c = lab(ipv6=False)
    out = tmp_path / "dgram.pcapng"
    path = tmp_path / "orig.sock"
    with datagram_servers("0.0.0.0", 5353, path, "upper", c.spawn):
        with capture(c, out):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(5)
                exchange(u, (c.ipv4, 5353), UDP_SENT)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as d:
                d.bind(str(tmp_path / "client.sock"))  # (abstract names are per network namespace)
                d.settimeout(5)
                exchange(d, str(path), UNIX_SENT)

    for mode, outcome in (("upper", "identical"), ("plain", "different")):
        fresh = tmp_path / f"fresh-{mode}.sock"
        with datagram_servers("127.0.0.1", 0, fresh, mode) as port:
            net = replay.replay(str(out), f"127.0.0.1:{port}", opts=replay.Options(speed=1.0, timeout=20))
            unix = replay.replay(str(out), str(fresh), opts=replay.Options(speed=None, timeout=20))
        (u,) = net["exchanges"]
        (d,) = unix["exchanges"]
        assert (u["kind"], u["protocol"], u["outcome"]) == ("udp", "datagrams", outcome), u
        assert (d["kind"], d["protocol"], d["outcome"]) == ("unix-dgram", "datagrams", outcome), d
        assert u["sent_bytes"] == sum(map(len, UDP_SENT)) and d["sent_bytes"] == sum(map(len, UNIX_SENT))
        assert net["timing"]["elapsed_s"] >= 0.1  # the captured gaps were kept
        if outcome == "different":
            assert u["differences"][0] == "datagram 1 differs (9 B -> 9 B)"
            assert [x for x in d["differences"] if not x.startswith(" ")] == [
                "datagram 1 differs (7 B -> 7 B)", "datagram 2 differs (7 B -> 7 B)"]
