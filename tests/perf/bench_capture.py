"""Capture completeness and cost: `bpfhook capture` of a lab container's incoming traffic
beside tcpdump on the container's host-side veth, in the same run.

    python tests/perf/bench_capture.py [megabytes] [datagrams]

One lab container runs a TCP and a UDP sink. bpfhook capture (cgroup_skb on the
container's cgroup, a subprocess) and `tcpdump -i bh-NAME -Q out -s 0` (what the
host sends into the container) record while the host sends a TCP bulk stream
paced at 1 Gbit/s (MEGABYTES, 1000: ~8.4 s, at most 10 s) and then a burst of DATAGRAMS UDP
datagrams. Figures: packets each capturer wrote against the packets the veth
transmitted (IFLA stats in /sys; both capture TCP and UDP, so the link carries
nothing else: IPv4 only, IPv6 off on both ends, neighbour entries pinned; else
the link-local IPv6 chatter and ARP replies count against both), the UDP
datagrams each holds out of those sent, the drops each reports (our ISB
ifdrop; tcpdump's "dropped by kernel"), and CPU seconds per GB of traffic
from /proc/PID/stat utime+stime of each capturer read when it has exited (a
zombie still shows its times): over the whole process, and while the traffic flows (from
just before the traffic starts to just before SIGINT, both capturers read at the same
moments): the start-up (~0.25 s of Python imports and program loading for us) and the
shutdown are rows of their own, which a short run would otherwise spread over the
per-GB figure. The target row divides each capturer's CPU while the traffic flows by the bytes
it wrote to its file (pcap's per-packet overhead and pcapng's differ by ~0.1% at these sizes),
so that a capturer that drops packets does not look the cheaper for it. The BPF program itself runs in the kernel's
softirq and is charged to no process.
run() returns {name: (ours, peer, unit, target)}.
"""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

MAIN = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, MAIN)

from bpfhook import pcapng  # noqa: E402
from bpfhook.lab import Lab  # noqa: E402

TCP_PORT, UDP_PORT = 5001, 5002
RATE = 1e9 / 8  # bytes per second of the TCP stream
CHUNK = 64 * 1024
MAX_SECONDS = 10.0
DATAGRAM = 200

SINK = r"""
import socket, threading
t = socket.create_server(("0.0.0.0", %d))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
u.bind(("0.0.0.0", %d))
def udp():
    while True:
        u.recv(65536)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = t.accept()
    while c.recv(1 << 20):
        pass
    c.close()
""" % (TCP_PORT, UDP_PORT)


def _quiet_link(c):
    """No packet on the veth but the traffic: IPv6 off on both ends (no DAD, MLD or router
    solicitation from the link-local addresses) and each end's neighbour entry for the other
    pinned (no ARP)."""
    def mac(netns, ifname):
        where = ["-n", netns] if netns else []
        return subprocess.run(["ip", *where, "-br", "link", "show", ifname], capture_output=True, text=True,
                              check=True).stdout.split()[2]

    for netns, ifname in ((None, c.host_if), (c.netns, "eth0")):
        where = ["ip", "netns", "exec", netns] if netns else []
        subprocess.run([*where, "sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=1"], check=True)
    subprocess.run(["ip", "neigh", "replace", c.ipv4, "lladdr", mac(c.netns, "eth0"), "dev", c.host_if,
                    "nud", "permanent"], check=True)
    subprocess.run(["ip", "-n", c.netns, "neigh", "replace", c.host_ipv4, "lladdr", mac(None, c.host_if),
                    "dev", "eth0", "nud", "permanent"], check=True)


def _tx_packets(ifname):
    with open(f"/sys/class/net/{ifname}/statistics/tx_packets") as f:
        return int(f.read())


def _cpu(proc):
    """utime+stime seconds a running child has used so far."""
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_at_exit(proc, timeout=60):
    """utime+stime seconds of an exiting child, read from /proc/PID/stat while it is a zombie, then reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] in "ZX":
            proc.wait(timeout=10)
            return (int(fields[11]) + int(fields[12])) / tick
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"capturer {proc.args[0]} did not exit")


def _send_tcp(addr, nbytes):
    """Stream nbytes (at most MAX_SECONDS) paced at RATE; returns bytes sent."""
    buf = b"\xa5" * CHUNK
    sent = 0
    started = time.monotonic()
    with socket.create_connection((addr, TCP_PORT), timeout=10) as s:
        while sent < nbytes:
            elapsed = time.monotonic() - started
            if elapsed > MAX_SECONDS:
                break
            ahead = sent / RATE - elapsed
            if ahead > 0:
                time.sleep(ahead)
            s.sendall(buf)
            sent += CHUNK
    return sent


def _send_udp(addr, count):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(count):
            s.sendto(i.to_bytes(4, "big") + b"u" * (DATAGRAM - 4), (addr, UDP_PORT))
            if i % 64 == 63:
                time.sleep(0.0005)  # a burst, yet within what the sink's socket buffer holds
    return count * DATAGRAM


def _ours(path):
    packets = udp = drops = 0
    for r in pcapng.Reader(path):
        if isinstance(r, pcapng.Packet):
            packets += 1
            udp += r.data[9] == 17 and len(r.data) >= 24 and int.from_bytes(r.data[22:24], "big") == UDP_PORT
        elif r.dropped is not None:
            drops, why = r.dropped, r.comments  # the last ISB holds the final count
    if drops:
        print(f"bench_capture: ours dropped {drops}: {' '.join(why)}", file=sys.stderr)
    return packets, udp, drops


def _peer(path, stderr):
    r = subprocess.run(["tcpdump", "-r", path, "-nn", "-q", "udp", "and", "dst", "port", str(UDP_PORT)],
                       capture_output=True, text=True, timeout=300)
    udp = len(r.stdout.splitlines())
    counts = {what: int(n) for n, what in re.findall(r"(\d+) packets? (captured|dropped by kernel)", stderr)}
    return counts["captured"], udp, counts.get("dropped by kernel")


def run(megabytes=1000, datagrams=20000):
    name = f"bc{os.getpid() % 100000}"
    c = Lab.up(name, ipv6=False)
    workdir = f"/tmp/bench_capture.{os.getpid()}"
    os.makedirs(workdir)
    ours_file, peer_file = f"{workdir}/ours.pcapng", f"{workdir}/tcpdump.pcap"
    sink = ours = peer = None
    try:
        _quiet_link(c)
        sink = c.spawn([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
        assert sink.stdout.readline().strip() == "ready", "sink did not start"
        ours = subprocess.Popen([sys.executable, "-m", "bpfhook", "capture", "--container", name, "--net",
                                 "-w", ours_file, "--quiet"], cwd=MAIN, stderr=subprocess.PIPE, text=True)
        peer = subprocess.Popen(["tcpdump", "-i", c.host_if, "-Q", "out", "-s", "0", "-B", "65536", "-w", peer_file,
                                 "tcp", "or", "udp"], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not (os.path.exists(ours_file) and os.path.getsize(ours_file) > 100):
            if ours.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bpfhook capture did not start: {ours.stderr.read()}")
            time.sleep(0.1)
        ready, _, _ = select.select([peer.stderr], [], [], 10)
        if not ready or "listening on" not in peer.stderr.readline():
            raise RuntimeError("tcpdump did not start")
        time.sleep(0.5)  # both attached
        ours_start, peer_start = _cpu(ours), _cpu(peer)  # start-up: imports, loading, attaching
        tx0 = _tx_packets(c.host_if)
        started = time.monotonic()
        nbytes = _send_tcp(c.ipv4, megabytes << 20)
        gbit = nbytes * 8 / (time.monotonic() - started) / 1e9
        nbytes += _send_udp(c.ipv4, datagrams)
        time.sleep(1.0)  # let the last packets reach both files
        sent = _tx_packets(c.host_if) - tx0
        ours_flowing, peer_flowing = _cpu(ours) - ours_start, _cpu(peer) - peer_start
        ours.send_signal(signal.SIGINT)
        peer.send_signal(signal.SIGINT)
        ours_cpu, peer_cpu = _cpu_at_exit(ours), _cpu_at_exit(peer)
        peer_err = peer.stderr.read()
        ours_packets, ours_udp, ours_drops = _ours(ours_file)
        peer_packets, peer_udp, peer_drops = _peer(peer_file, peer_err)
        gb = nbytes / 1e9
        ours_flow, peer_flow = ours_flowing / gb, peer_flowing / gb
        # per GB each wrote to its file: a capturer that drops does not look cheaper for it
        ours_written, peer_written = os.path.getsize(ours_file) / 1e9, os.path.getsize(peer_file) / 1e9
        ratio = (ours_flowing / ours_written) / (peer_flowing / peer_written) if peer_flowing else None
        return {
            f"TCP stream into the container ({nbytes >> 20} MB total)": (round(gbit, 2), None, "Gbit/s", None),
            "packets written / packets the veth sent in": (round(100 * ours_packets / sent, 2),
                                                            round(100 * peer_packets / sent, 2), "%", ">= 100"),
            f"UDP datagrams in the file (of {datagrams} sent)": (ours_udp, peer_udp, "datagrams", f">= {datagrams}"),
            "drops the capturer reports": (ours_drops, peer_drops, "packets", "<= 0"),
            "capturer CPU per GB of traffic (utime+stime)": (round(ours_cpu / gb, 3), round(peer_cpu / gb, 3),
                                                             "s/GB", None),
            "capturer CPU per GB while the traffic flows (start-up and shutdown excluded)": (
                round(ours_flow, 3), round(peer_flow, 3), "s/GB", None),
            "CPU per GB written while the traffic flows: ratio to tcpdump's": (
                None if ratio is None else round(ratio, 3), None, "ratio", "<= 1.0"),
            "capturer start-up CPU (utime+stime before the traffic)": (round(ours_start, 3), round(peer_start, 3),
                                                                       "s", None),
            "capturer CPU from SIGINT to exit (last drain, statistics, shutdown)": (
                round(ours_cpu - ours_start - ours_flowing, 3), round(peer_cpu - peer_start - peer_flowing, 3),
                "s", None),
        }
    finally:
        for p in (ours, peer, sink):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        c.down()
        for f in (ours_file, peer_file):
            if os.path.exists(f):
                os.unlink(f)
        os.rmdir(workdir)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    for figure, (ours, peer, unit, target) in run(*args).items():
        print(f"{figure}: ours {ours} {unit}, tcpdump {peer}, target {target}")
