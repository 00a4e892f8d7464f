"""bpfhook capture against real traffic in a lab container.

A server in the container receives known TCP, UDP and Unix-socket payloads;
the pcapng must hold exactly those bytes with the right process and
container, read back by tshark (the independent reader) and by our reader.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bpfhook import capture as capture_tool, flows, pcapng
from bpfhook.lab import Lab
from tests import kernel_state, oracles
from tests.conftest import eventually

NAME = "captest"
TCP_PAYLOAD = b"GET /known-tcp-payload HTTP/1.1\r\nHost: lab\r\n\r\n"
UDP_PAYLOAD = b"known-udp-payload-\x00\x01\x02"
UDS_STREAM = [b"uds-stream-one|", b"iov-two"]
UDS_DGRAM = b"uds-dgram-abstract"
HERE = os.path.dirname(os.path.abspath(__file__))
MAIN = os.path.dirname(os.path.dirname(HERE))

SERVER = r"""
import select, socket, sys, threading
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080)); t.listen()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9090))
us = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); us.bind(sys.argv[1]); us.listen()
ud = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); ud.bind("\0bpfhook-captest")
def udp():
    while True:
        data, peer = u.recvfrom(4096); u.sendto(data, peer)
def uds():
    while True:
        c, _ = us.accept(); data = c.recv(65536); c.sendall(b"pong:" + data); c.close()
def dgram():  # select first: a recv already blocked when the capture attaches is not seen
    while True:
        select.select([ud], [], []); ud.recv(65536)
for f in (udp, uds, dgram):
    threading.Thread(target=f, daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = t.accept(); c.recv(4096); c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); c.close()
"""

UDS_CLIENT = r"""
import socket, sys
c = socket.socket(socket.AF_UNIX); c.connect(sys.argv[1])
c.sendmsg([b"uds-stream-one|", b"iov-two"]); c.recv(100)
d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); d.sendto(b"uds-dgram-abstract", b"\0bpfhook-captest")
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        Lab.down(NAME)
    except Exception:
        pass
    c = Lab.up(NAME)
    try:
        sock = str(tmp_path_factory.mktemp("capture") / "srv.sock")
        server = c.spawn([sys.executable, "-c", SERVER, sock], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout.readline().strip() == "ready"
            yield c, server, sock
        finally:
            server.kill()
            server.wait()
    finally:
        Lab.down(NAME)


def capture(out, *args):
    return subprocess.Popen([sys.executable, "-m", "bpfhook", "capture", "--container", NAME, "-w", str(out),
                             "--quiet", *args], cwd=MAIN, stderr=subprocess.PIPE, text=True)


def wait_started(proc, out, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(out) and os.path.getsize(out) > 100:
            time.sleep(0.3)  # attached right after the interfaces are written
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError("capture did not start")


def send_traffic(c, sock):
    with socket.create_connection((c.ipv4, 8080), timeout=5) as s:
        s.sendall(TCP_PAYLOAD)
        assert s.recv(100).endswith(b"ok")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(UDP_PAYLOAD, (c.ipv4, 9090))
        assert s.recv(100) == UDP_PAYLOAD
    client = c.spawn([sys.executable, "-c", UDS_CLIENT, sock])
    assert client.wait(timeout=10) == 0


def tshark(path, *fields, filter=None):
    argv = [oracles.require("tshark"), "-r", str(path), "-T", "fields"] + [a for f in fields for a in ("-e", f)]
    if filter:
        argv += ["-Y", filter]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "warn" not in r.stderr.lower() and "appears" not in r.stderr, r.stderr
    return [line.split("\t") for line in r.stdout.splitlines()]


def capture_traffic(lab, out, *options):
    """A capture (still running) that has seen the known traffic: its process."""
    c, _server, sock = lab
    proc = capture(out, *options)
    wait_started(proc, out)
    send_traffic(c, sock)
    time.sleep(1)
    return proc


@pytest.fixture(scope="module")
def captured(lab, tmp_path_factory):
    """A capture, both directions, of known TCP, UDP and Unix-socket traffic, ended by SIGINT."""
    out = tmp_path_factory.mktemp("captured") / "cap.pcapng"
    proc = capture_traffic(lab, out, "--both-directions")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0, proc.stderr.read()
    return out


def test_capture_net_and_uds_exact_bytes_and_attribution(lab, captured):
    c, server, sock = lab
    out = captured
    assert os.stat(out).st_mode & 0o777 == 0o600
    packets = [r for r in pcapng.Reader(out) if isinstance(r, pcapng.Packet)]
    ours_tcp = [p for p in packets if p.interface.linktype == pcapng.LINKTYPE_RAW and TCP_PAYLOAD in p.data]
    assert len(ours_tcp) == 1 and ours_tcp[0].direction == "in"
    comment = pcapng.parse_comment(ours_tcp[0].comments[0])
    assert comment["pid"] == str(server.pid) and comment["container"] == NAME
    assert comment["cgroup"] == c.cgroup_path
    uds = [pcapng.decode_uds(p.data) for p in packets if p.interface.linktype == pcapng.LINKTYPE_USER0]
    received = [u for u in uds if u.pid == server.pid and u.direction == 1]
    assert b"".join(UDS_STREAM) in [u.payload for u in received if u.sock_type == 1]
    stream = next(u for u in received if u.payload == b"".join(UDS_STREAM))
    assert stream.path == sock.encode() and stream.peer_pid not in (0, server.pid)
    dgram = [u for u in received if u.sock_type == 2]
    assert [u.payload for u in dgram] == [UDS_DGRAM] and dgram[0].path == b"\0bpfhook-captest"
    sent = [u for u in uds if u.pid == server.pid and u.direction == 0 and u.sock_type == 1]
    assert b"pong:" + b"".join(UDS_STREAM) in [u.payload for u in sent]
    stats = [r for r in pcapng.Reader(out) if isinstance(r, pcapng.Statistics)]
    assert stats and all(s.dropped == 0 for s in stats)


def test_tshark_reads_the_same_bytes_and_comments(lab, captured):
    """tshark, the independent reader: TCP and UDP payloads, comments naming the server process
    and the container, the Unix-socket records."""
    c, server, _sock = lab
    tcp = tshark(captured, "tcp.payload", "frame.comment", filter="tcp.payload && tcp.dstport == 8080")
    assert [bytes.fromhex(p) for p, _ in tcp] == [TCP_PAYLOAD]
    comment = pcapng.parse_comment(tcp[0][1])
    assert comment["pid"] == str(server.pid) and comment["container"] == NAME
    assert comment["cgroup"] == c.cgroup_path
    udp = tshark(captured, "udp.payload", "frame.comment", filter="udp.dstport == 9090")
    assert [bytes.fromhex(p) for p, _ in udp] == [UDP_PAYLOAD]
    assert pcapng.parse_comment(udp[0][1])["pid"] == str(server.pid)
    uds_rows = tshark(captured, "data", "frame.comment", filter="frame.comment contains \"path=\"")
    assert len(uds_rows) >= 3


@pytest.fixture(scope="module")
def killed(lab, tmp_path_factory):
    """A capture of TCP traffic ended by SIGKILL."""
    out = tmp_path_factory.mktemp("killed") / "killed.pcapng"
    proc = capture_traffic(lab, out, "--net")
    proc.kill()
    proc.wait(timeout=10)
    return out


def test_sigkill_leaves_a_readable_file(killed):
    reader = pcapng.Reader(killed)
    assert any(TCP_PAYLOAD in p.data for p in reader if isinstance(p, pcapng.Packet))
    assert reader.truncated == 0


def test_tshark_and_capinfos_read_the_killed_capture(killed):
    rows = tshark(killed, "tcp.payload", filter="tcp.payload")
    assert [bytes.fromhex(p) for (p,) in rows] == [TCP_PAYLOAD]
    assert subprocess.run([oracles.require("capinfos"), str(killed)], capture_output=True,
                          timeout=60).returncode == 0


@pytest.mark.parametrize("container,path,message", [
    ("no-such-container", "ok", "no container"),
    (NAME, "/proc/nope/out.pcapng", "cannot write"),
])
def test_bad_input_one_line_nothing_left(lab, tmp_path, container, path, message):
    out = tmp_path / "out.pcapng" if path == "ok" else path
    before = kernel_state.snapshot()
    r = subprocess.run([sys.executable, "-m", "bpfhook", "capture", "--container", container, "-w", str(out),
                        "--duration", "1"], cwd=MAIN, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
    assert not os.path.exists(out)
    assert eventually(lambda: kernel_state.snapshot() == before)  # (programs go after an RCU grace period)


def test_existing_file_is_never_overwritten(lab, tmp_path):
    out = tmp_path / "exists.pcapng"
    out.write_bytes(b"keep")
    r = subprocess.run([sys.executable, "-m", "bpfhook", "capture", "--container", NAME, "-w", str(out)],
                       cwd=MAIN, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "exists" in r.stderr
    assert out.read_bytes() == b"keep"


def test_one_container_lookup_for_every_tool(tmp_path):
    """Two containers' cgroups (real ones, under a parent of our own) whose ids share a prefix: capture,
    mirror and trafficgen each refuse the prefix in one line naming both; capture takes a longer one."""
    from bpfhook import cgroups

    parent = f"/bpfhook-find-test.{os.getpid()}"
    first, second = "ab12cd" + "0" * 58, "ab12cd" + "1" * 58
    for cid in (first, second):
        cgroups.create(f"{parent}/{cid}")
    try:
        for argv in (["capture", "--container", "ab12cd", "-w", str(tmp_path / "x.pcapng")],
                     ["mirror", "--from", "ab12cd", "--to", "lo"],
                     ["trafficgen", "--auto", "--container", "ab12cd", "--requests", "1"]):
            r = subprocess.run([sys.executable, "-m", "bpfhook", *argv], cwd=MAIN, capture_output=True, text=True,
                               timeout=60)
            assert (r.returncode, r.stdout) == (1, ""), r.stderr
            assert r.stderr == (f"bpfhook: error: 'ab12cd' names 2 containers: {first[:12]} (docker {parent}/{first}), "
                                f"{second[:12]} (docker {parent}/{second})\n")
        r = subprocess.run([sys.executable, "-m", "bpfhook", "capture", "--container", first[:7], "-w",
                            str(tmp_path / "x.pcapng"), "--duration", "0.1", "--quiet"], cwd=MAIN, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and f"of {first[:12]} ({parent}/{first})" in r.stderr, r.stderr
    finally:
        cgroups.remove(parent)
    assert not os.path.isdir(cgroups.directory(parent))


def _udp_flood(c, datagrams, size=1000):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(datagrams):
            s.sendto(i.to_bytes(4, "big") * (size // 4), (c.ipv4, 9090))
            if i % 200 == 0:
                time.sleep(0.005)  # (the echo server keeps up; the capture is what is tested)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_rotation_keeps_a_ring_of_whole_files(lab, tmp_path, stop):
    """-C 1 -W 3: a ring of three files of about a megabyte, each whole under its name (capinfos and
    our reader read every one), the newest holding the latest datagrams. Killed, the file being
    written is left under its hidden .partial name only; stopped, none is left. Each file names
    the flow's owner again."""
    c, server, _sock = lab
    proc = capture(tmp_path / "ring.pcapng", "--net", "-C", "1", "-W", "3")
    deadline = time.monotonic() + 30
    while not any(n.endswith(".partial") for n in os.listdir(tmp_path)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.1)
    time.sleep(0.5)  # attached
    _udp_flood(c, 6000)
    time.sleep(1)
    proc.send_signal(stop)
    proc.wait(timeout=20)
    names = sorted(os.listdir(tmp_path))
    whole = [n for n in names if not n.endswith(".partial")]
    assert whole == ["ring-000.pcapng", "ring-001.pcapng", "ring-002.pcapng"]
    assert len(names) - len(whole) == (1 if stop == signal.SIGKILL else 0)
    files = []  # (latest packet's time, size, payloads) of each
    for name in whole:
        r = subprocess.run([oracles.require("capinfos"), str(tmp_path / name)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        packets = [p for p in pcapng.Reader(str(tmp_path / name)) if isinstance(p, pcapng.Packet)]
        assert packets
        owners = {f.meta.get("pid") for f in flows.read(str(tmp_path / name)).flows}
        assert owners == {str(server.pid)}, (name, owners)
        files.append((max(p.ts_ns for p in packets), os.path.getsize(tmp_path / name),
                      [bytes(p.data[28:]) for p in packets]))
    files.sort()
    assert all(0.9e6 < size < 1.2e6 for _, size, _ in files[:-1]) and files[-1][1] < 1.2e6
    if stop == signal.SIGINT:  # the last file closed holds the last datagram
        assert (5999).to_bytes(4, "big") * 250 in files[-1][2]


def test_rotation_options_out_of_bounds_are_one_line(lab, tmp_path):
    for args, message in ((["-W", "3"], "goes with -C or -G"), (["-C", "0"], "-C 0"), (["-G", "-1"], "-G -1")):
        r = subprocess.run([sys.executable, "-m", "bpfhook", "capture", "--container", NAME, "-w",
                            str(tmp_path / "x.pcapng"), *args], cwd=MAIN, capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []


# -- the network path: the kernel writes each packet as a pcapng EPB; Python sees only the first
# packet of each flow (to comment its owner), unless asked for a comment on every packet

UDP_PORT, TCP_PORT = 9090, 8080
DATAGRAMS = 10000


def send_many(c):
    """DATAGRAMS datagrams from one socket (one flow), and one TCP connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(DATAGRAMS):
            s.sendto(i.to_bytes(4, "big") + b"d" * 60, (c.ipv4, UDP_PORT))
            if i % 64 == 63:
                time.sleep(0.0005)
    with socket.create_connection((c.ipv4, TCP_PORT), timeout=5) as s:
        s.sendall(TCP_PAYLOAD)
        assert s.recv(100).endswith(b"ok")


def capture_in_process(lab, path, **options):
    """Capture send_many's traffic in this process, so that the calls of its per-record function
    can be counted: (the file, those calls, the Capture's counters)."""
    c, _server, _sock = lab
    cap = capture_tool.Capture(capture_tool.resolve_target(NAME), net=True, uds=False, both_directions=True, **options)
    calls = []
    on_flow = cap._on_flow
    cap._on_flow = lambda record: (calls.append(len(record)), on_flow(record))
    writer = pcapng.Writer(str(path), application="test")
    try:
        cap.start(writer)
        send_many(c)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            cap.poll(0.1)
            seen = cap._net_stats()["seen"]
            if seen and seen == cap.counters.packets + cap.counters.filtered:
                break
        cap.write_statistics()
    finally:
        cap.close()
        writer.close()
    return path, len(calls), cap.counters


def udp_in(path):
    return [p for p in pcapng.Reader(path) if isinstance(p, pcapng.Packet) and p.direction == "in"
            and p.data[9] == 17 and int.from_bytes(p.data[22:24], "big") == UDP_PORT]


@pytest.fixture(scope="module")
def per_flow(lab, tmp_path_factory):
    return capture_in_process(lab, tmp_path_factory.mktemp("flows") / "flows.pcapng")


@pytest.fixture(scope="module")
def per_packet(lab, tmp_path_factory):
    return capture_in_process(lab, tmp_path_factory.mktemp("packets") / "packets.pcapng", packet_comments=True)


def test_python_sees_only_each_flows_first_packet(per_flow):
    path, calls, counters = per_flow
    assert len(udp_in(path)) == DATAGRAMS
    assert counters.packets >= DATAGRAMS + 6
    # the UDP flow, the SYN at the listener, the connection's socket, each way: a handful
    assert 1 <= calls <= 8, calls


def test_packet_comments_pass_every_packet_through_python(per_packet):
    path, calls, counters = per_packet
    assert len(udp_in(path)) == DATAGRAMS
    assert calls == counters.packets
    assert all(p.comments for p in pcapng.Reader(path) if isinstance(p, pcapng.Packet))


def test_every_flow_has_its_owner_in_flows(lab, per_flow):
    """Our reader (flows, used by analyze and replay): each flow's owner is the server."""
    _c, server, _sock = lab
    found = flows.read(per_flow[0])
    assert {f.kind for f in found.flows} == {"tcp", "udp"}
    for f in found.flows:
        assert f.meta.get("pid") == str(server.pid) and f.meta.get("container") == NAME, (f.kind, f.meta)
    assert found.drops == 0


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_tshark_finds_the_owner_on_each_flows_first_packet(lab, per_flow, proto):
    """tshark, the independent reader: every packet read, and in each stream the first packet
    carries the owner's comment, the others none."""
    _c, server, _sock = lab
    rows = tshark(per_flow[0], f"{proto}.stream", "frame.comment", filter=proto)
    assert len(rows) >= (DATAGRAMS if proto == "udp" else 6)
    first = {}
    for stream, comment in ((r[0], r[1] if len(r) > 1 else "") for r in rows):
        first.setdefault(stream, comment)
    for stream, comment in first.items():
        assert pcapng.parse_comment(comment).get("pid") == str(server.pid), (stream, comment)
    commented = sum(1 for r in rows if len(r) > 1 and r[1])
    assert commented <= 8, commented


def test_capinfos_reads_flow_and_packet_comment_files(per_flow, per_packet):
    for path in (per_flow[0], per_packet[0]):
        r = subprocess.run([oracles.require("capinfos"), "-c", str(path)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
