"""bpfhook demo mirror: three lab containers, one mirror, live packets.

    client ---- host ---- server            client sends TCP and UDP to server
                  |
                  +------ observer          server's veth mirrored to observer's

The copies are cloned onto the observer's host-side veth egress, which the
veth hands to the observer's eth0: an AF_PACKET socket inside the observer's
netns reads them there (pkt_type OTHERHOST: the frames carry the server's and
the host's MAC addresses, not the observer's, so its IP stack drops them after
the tap). The host routes client <-> server as it does between any lab
containers (bpfhook.lab: forwarding on their veths, and their own iptables rules
on a Docker host). Everything is taken down on exit, Ctrl-C and SIGTERM.

Also the toolbox of the mirror tests and benchmark: packet sockets in a netns,
bounded client/server traffic between lab containers, frame summaries.
"""
import contextlib
import ipaddress
import os
import select
import socket
import struct
import subprocess
import sys
import time

from bpfhook.lab import Lab
from bpfhook.mirror import PacketFilter, mirror
from bpfhook.netns import entered as netns_of
from pybpf.errors import BpfError

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_STATISTICS = 263, 6
SO_RCVBUFFORCE = 33
DEMO_PORT = 5201


class DemoError(BpfError):
    """A demo's client or server did not do its part: one line, not a traceback."""


# -- packet sockets ------------------------------------------------------------------------------

def packet_socket(ifname, netns_path=None, rcvbuf=32 << 20):
    """A non-blocking AF_PACKET socket on ifname, made inside the netns at netns_path (or here)."""
    with netns_of(netns_path) if netns_path else contextlib.nullcontext():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            s.bind((ifname, ETH_P_ALL))
        except BaseException:
            s.close()
            raise
    s.setblocking(False)
    return s


def drain(sock, keep=lambda frame, pkt_type: True, max_frames=1_000_000):
    """Frames waiting on a packet socket: a list of (pkt_type, bytes) that keep() accepts."""
    out = []
    buf = bytearray(256 << 10)  # GSO frames reach 64 KiB
    view = memoryview(buf)
    for _ in range(max_frames):
        try:
            n, addr = sock.recvfrom_into(buf)
        except BlockingIOError:
            break
        frame = bytes(view[:n])
        if keep(frame, addr[2]):
            out.append((addr[2], frame))
    return out


def drops(sock):
    """Frames the kernel dropped on this socket (full buffer) since the last call."""
    _packets, dropped = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return dropped


def ipv4_between(*addresses, incoming_only=False):
    """keep() for drain(): IPv4 frames from or to one of addresses (incoming_only: not ones this host sent)."""
    wanted = {socket.inet_aton(a) for a in addresses}

    def keep(frame, pkt_type):
        return (not incoming_only or pkt_type != PACKET_OUTGOING) and len(frame) >= 34 and \
            frame[12:14] == b"\x08\x00" and (frame[26:30] in wanted or frame[30:34] in wanted)

    return keep


def summary(frame):
    """One line per frame, tcpdump style."""
    if len(frame) < 14:
        return f"runt frame, {len(frame)} bytes"
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == 0x0806:
        return f"ARP, {len(frame)} bytes"
    if ethertype == 0x86DD and len(frame) >= 54:
        src, dst = (str(ipaddress.IPv6Address(frame[o:o + 16])) for o in (22, 38))
        return _l4(frame[20], src, dst, frame[54:], len(frame))
    if ethertype != 0x0800 or len(frame) < 34:
        return f"ethertype {ethertype:#06x}, {len(frame)} bytes"
    ihl = (frame[14] & 0x0F) * 4
    src, dst = socket.inet_ntoa(frame[26:30]), socket.inet_ntoa(frame[30:34])
    return _l4(frame[23], src, dst, frame[14 + ihl:], len(frame))


_TCP_FLAGS = "FSRPAUEC"


def _l4(proto, src, dst, l4, length):
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = struct.unpack("!HH", l4[:4])
        name = "TCP" if proto == 6 else "UDP"
        flags = ""
        if proto == 6 and len(l4) >= 14:
            flags = " [" + "".join(c for i, c in enumerate(_TCP_FLAGS) if l4[13] & (1 << i)) + "]"
        return f"{name} {src}.{sport} > {dst}.{dport}{flags}, {length} bytes"
    if proto in (1, 58):
        return f"ICMP{'v6' if proto == 58 else ''} {src} > {dst}, {length} bytes"
    return f"proto {proto} {src} > {dst}, {length} bytes"


# -- traffic between lab containers --------------------------------------------------------------

SERVER = r"""
import select, socket, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind(("0.0.0.0", port)); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
print("ready", flush=True)
conns, end = [], time.monotonic() + seconds
while time.monotonic() < end:
    r, _, _ = select.select([t, u] + conns, [], [], 0.2)
    for s in r:
        if s is t:
            conns.append(t.accept()[0])
        elif s is u:
            data, peer = u.recvfrom(65536); u.sendto(data[:64], peer)
        elif not s.recv(1 << 20):
            s.close(); conns.remove(s)
"""

CLIENT = r"""
import socket, sys, time
host, port, seconds, nbytes, datagrams = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.5)
for i in range(datagrams):
    u.sendto(bytes([i % 256]) * (16 + 37 * i % 1400), (host, port))
    try: u.recv(2048)
    except OSError: pass
sent, chunk = 0, b"m" * 65536
start = time.monotonic()
if nbytes:
    t = socket.create_connection((host, port), timeout=5)
    while sent < nbytes and time.monotonic() - start < seconds:
        sent += t.send(chunk[: nbytes - sent])
    t.shutdown(socket.SHUT_WR); t.recv(1); t.close()
print(sent, time.monotonic() - start, flush=True)
"""


@contextlib.contextmanager
def server(container, port=DEMO_PORT, seconds=60.0):
    """A TCP sink and UDP echo (first 64 bytes) inside container, ready on entry, killed on exit."""
    p = container.spawn([sys.executable, "-c", SERVER, str(port), str(seconds)],
                        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # An upper bound only (returns as soon as it is ready): Python under qemu emulation
        # takes tens of seconds to start.
        ready, _, _ = select.select([p.stdout], [], [], 60)
        if not ready or p.stdout.readline().strip() != "ready":
            raise DemoError(f"server in {container.name} did not start")
        yield p
    finally:
        p.kill()
        p.wait()
        p.stdout.close()


def client(container, host, port=DEMO_PORT, seconds=5.0, nbytes=1 << 20, datagrams=10):
    """Run the client in container: `datagrams` UDP requests, then a TCP stream of up to nbytes for
    up to `seconds`. Returns (bytes sent over TCP, seconds it took)."""
    argv = [sys.executable, "-c", CLIENT, host, str(port), str(seconds), str(nbytes), str(datagrams)]
    p = container.spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise DemoError(f"client in {container.name} did not finish") from None
    if p.returncode:
        raise DemoError(f"client in {container.name} failed: {err.strip().splitlines()[-1:]}")
    sent, elapsed = out.split()
    return int(sent), float(elapsed)


# -- the demo ---------------------------------------------------------------------------------------

NEEDS_ROOT = True
POLLS_SHUTDOWN = True  # containers and mirror come down in order, whenever the signal comes


def add_arguments(parser):
    sub = parser.add_subparsers(dest="demo", required=True, metavar="DEMO")
    p = sub.add_parser("mirror", help="client -> server traffic, server's veth mirrored to an observer")
    p.add_argument("--method", choices=("mirred", "bpf"), default="mirred")
    p.add_argument("--filter", metavar="PROTO[/PORT]", help="bpf method: mirror only these packets")
    p.add_argument("--seconds", type=float, default=3.0, help="how long the client sends (default 3)")
    p.add_argument("--max-lines", type=int, default=40, help="packet summaries to print (default 40)")


def run(args):
    prefix = f"md{os.getpid() % 100000}"
    names = [f"{prefix}-client", f"{prefix}-server", f"{prefix}-observer"]
    made = []
    try:
        for name in names:
            if args.shutdown:
                raise KeyboardInterrupt
            made.append(Lab.up(name))
        cli, srv, obs = made
        print(f"client {cli.ipv4}, server {srv.ipv4}, observer {obs.ipv4} (netns {obs.netns})")
        packet_filter = PacketFilter.parse(args.filter) if args.filter else None
        with mirror(srv, obs, method=args.method, packet_filter=packet_filter) as m:
            print(f"mirroring {m.describe()}")
            with contextlib.closing(packet_socket("eth0", obs.netns_path)) as sock, server(srv):
                _traffic_and_watch(args, cli, srv, sock)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        for c in reversed(made):
            c.down()
        print(f"removed containers {' '.join(c.name for c in made)}")
    return 0


def _traffic_and_watch(args, cli, srv, sock):
    """Run the client in the background; print what the observer sees while it runs."""
    argv = [sys.executable, "-c", CLIENT, srv.ipv4, str(DEMO_PORT), str(args.seconds), str(256 << 20), "5"]
    proc = cli.spawn(argv, stdout=subprocess.PIPE, text=True, start_new_session=True)
    keep = ipv4_between(srv.ipv4, incoming_only=True)
    printed = seen = 0
    deadline = time.monotonic() + args.seconds + 20
    try:
        while time.monotonic() < deadline and not args.shutdown:
            done = proc.poll() is not None
            select.select([sock], [], [], 0.2)
            for _pkt_type, frame in drain(sock, keep):
                seen += 1
                if printed < args.max_lines:
                    printed += 1
                    print(f"observer: {summary(frame)}")
            if done:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate()
    sent, elapsed = (out.split() + ["0", "0"])[:2]
    rate = int(sent) * 8 / float(elapsed) / 1e6 if float(elapsed) else 0.0
    print(f"client sent {int(sent)} TCP bytes in {float(elapsed):.2f}s ({rate:.0f} Mbit/s); "
          f"observer saw {seen} frames ({printed} printed)")
