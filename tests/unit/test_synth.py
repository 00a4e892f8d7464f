"""bpfhook.synth and bpfhook.tls.Plaintext: TLS plaintext records as TCP/IP packets that tshark
(the independent reader: checksums verified, HTTP dissected) and bpfhook.flows read as a clear
connection; lost bytes are a gap, never a splice."""
import ipaddress
import random
import socket
import struct
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfhook import flows, pcapng, synth, tls
from bpfhook.programs import tls as prog
from pybpf.layout import codec
from tests import oracles

REQUEST = b"GET /tls-plaintext?x=1 HTTP/1.1\r\nHost: lab\r\nUser-Agent: test\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
CLIENT_V4, SERVER_V4 = (ipaddress.ip_address("10.77.1.1"), 40404), (ipaddress.ip_address("10.77.1.2"), 8443)
CLIENT_V6, SERVER_V6 = (ipaddress.ip_address("fd77::1:1"), 40405), (ipaddress.ip_address("fd77::1:2"), 8443)


def slow_sum(data):
    """The one's-complement sum the RFC 1071 way: 16-bit words with end-around carry."""
    data = bytes(data) + (b"\0" if len(data) % 2 else b"")
    total = 0
    for (word,) in struct.iter_unpack(">H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=3000))
def test_ones_sum_is_rfc1071(data):
    assert synth.ones_sum(data) == slow_sum(data) or (synth.ones_sum(data) == 0xFFFF and slow_sum(data) == 0)


def test_ones_sum_edges():
    assert synth.ones_sum(b"") == 0
    assert synth.ones_sum(b"\xff\xff") == 0xFFFF
    assert synth.ones_sum(b"\x00\x01\xff\xfe") == 0xFFFF


def write(path, packets):
    with pcapng.Writer(path) as w:
        iface = w.interface(pcapng.LINKTYPE_RAW, "t:tls-plaintext")
        for i, packet in enumerate(packets):
            w.packet(iface, 1_700_000_000_000_000_000 + i * 1000, packet, comment="pid=7 comm=srv tls=plaintext")


def exchange(client, server, rng=None):
    conn = synth.Connection(client, server, rng or random.Random(1))
    out = conn.handshake()
    out += conn.data(True, 1, len(REQUEST), 0, REQUEST)
    out += conn.data(False, 2, len(RESPONSE), 0, RESPONSE)
    return [p for _, p in out]


def tshark(path, *fields, filter=None, checksums=True):
    argv = [oracles.require("tshark"), "-r", str(path), "-T", "fields", "-E", "separator=|"]
    if checksums:
        argv += ["-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE"]
    argv += [a for f in fields for a in ("-e", f)] + (["-Y", filter] if filter else [])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line.split("|") for line in r.stdout.splitlines()]


@pytest.mark.parametrize("client,server", [(CLIENT_V4, SERVER_V4), (CLIENT_V6, SERVER_V6)])
def test_tshark_verifies_checksums_and_reads_http(tmp_path, client, server):
    path = tmp_path / "x.pcapng"
    write(path, exchange(client, server))
    rows = tshark(path, "tcp.checksum.status", "tcp.stream", "tcp.flags.str")
    assert [r[0] for r in rows] == ["1"] * 5  # 1: good
    assert {r[1] for r in rows} == {"0"}
    if client[0].version == 4:
        assert [r[0] for r in tshark(path, "ip.checksum.status")] == ["1"] * 5
    assert tshark(path, "tcp.analysis.flags", filter="tcp.analysis.flags") == []
    req = tshark(path, "http.request.method", "http.request.uri", "ip.src", "ipv6.src", "tcp.srcport",
                 filter="http.request")
    assert len(req) == 1 and req[0][:2] == ["GET", "/tls-plaintext?x=1"]
    assert str(client[0]) in req[0][2:4] and req[0][4] == str(client[1])
    resp = tshark(path, "http.response.code", "tcp.dstport", "http.file_data", filter="http.response")
    assert resp == [["200", str(client[1]), "hello"]]


def test_flows_read_the_synthesized_connection(tmp_path):
    path = tmp_path / "x.pcapng"
    write(path, exchange(CLIENT_V4, SERVER_V4))
    (flow,) = flows.read(path).flows
    assert flow.client == "10.77.1.1:40404" and flow.server == "10.77.1.2:8443"
    assert [(m.direction, m.data) for m in flow.messages] == [(flows.C2S, REQUEST), (flows.S2C, RESPONSE)]
    assert flow.problems() == []


def test_a_lost_tail_is_a_gap_and_the_next_call_follows_it(tmp_path):
    """Call 1 moved 100 bytes; only its first 60 arrived. Call 2 sits after all 100."""
    conn = synth.Connection(CLIENT_V4, SERVER_V4, random.Random(2))
    packets = conn.handshake()
    packets += conn.data(True, "call1", 100, 0, b"a" * 60)
    packets += conn.data(True, "call2", 10, 0, b"b" * 10)
    path = tmp_path / "gap.pcapng"
    write(path, [p for _, p in packets])
    (flow,) = flows.read(path).flows
    assert flow.streams[flows.C2S].gaps == [(60, 40)]
    seqs = [int(r[0]) for r in tshark(path, "tcp.seq", filter="tcp.len > 0")]
    assert seqs == [1, 101]


def test_segments_never_pass_the_ip_length(tmp_path):
    big = bytes(range(256)) * 600  # 153600 bytes in one call
    conn = synth.Connection(CLIENT_V6, SERVER_V6, random.Random(3))
    packets = [p for _, p in conn.handshake() + conn.data(False, 1, len(big), 0, big)]
    assert all(len(p) - 40 - 20 <= synth.MAX_SEGMENT for p in packets)
    path = tmp_path / "big.pcapng"
    write(path, packets)
    (flow,) = flows.read(path).flows
    assert flow.streams[flows.S2C].data == big
    assert [r[0] for r in tshark(path, "tcp.checksum.status")] == ["1"] * len(packets)


# -- Plaintext: records of the kernel program in, packets out -----------------------------

EVENT = codec(prog.TlsEvent)


def record(ts, tgid, handle, sk, call, data, local=("10.77.1.2", 8443), remote=("10.77.1.1", 40404),
           family=socket.AF_INET, total=None, offset=0):
    number, direction, result = prog.CALLS[call]
    raw = [ipaddress.ip_address(a).packed.ljust(16, b"\0") for a in (local[0], remote[0])]
    head = EVENT.encode(dict(ts_ns=ts, pid_tgid=tgid << 32 | tgid, handle=handle, sk=sk, cgroup_id=9,
                             cookie=prog.cookie(call, 0), total=len(data) if total is None else total,
                             offset=offset, len=len(data), family=family if sk else 0,
                             sport=local[1] if sk else 0, dport=remote[1] if sk else 0,
                             saddr=raw[0] if sk else bytes(16), daddr=raw[1] if sk else bytes(16),
                             comm=b"srv".ljust(16, b"\0")))
    return head + data


@pytest.fixture
def plaintext(monkeypatch):
    monkeypatch.setattr(tls.procfs, "listening_ports", lambda pid: {8443} if pid == 100 else set())
    out = []
    p = tls.Plaintext(lambda ts, packet, comment, inbound: out.append((packet, comment, inbound)),
                      lambda ev: f"pid={ev.pid_tgid >> 32}", random.Random(4))
    return p, out


def parsed(out):
    return [flows.parse_packet(pcapng.LINKTYPE_RAW, packet) for packet, _, _ in out]


def test_server_end_reads_then_writes(plaintext):
    p, out = plaintext
    p.record(record(1, 100, 0xAA, 0xFF01, "SSL_read_ex", REQUEST))
    p.record(record(2, 100, 0xAA, 0xFF01, "SSL_write_ex", RESPONSE))
    segs = parsed(out)
    assert [g.flags for g in segs[:3]] == [synth.SYN, synth.SYN | synth.ACK, synth.ACK]
    assert (str(segs[0].src), segs[0].sport) == ("10.77.1.1", 40404)  # the peer is the client
    assert segs[3].payload == REQUEST and segs[4].payload == RESPONSE
    assert [inbound for _, _, inbound in out] == [True, False, True, True, False]
    assert (p.calls, p.bytes) == (2, len(REQUEST) + len(RESPONSE))


def test_a_call_without_syscall_follows_its_handle(plaintext):
    """The rest of a record a smaller read left behind: no syscall, sk 0; the same SSL * says where."""
    p, out = plaintext
    p.record(record(1, 100, 0xAA, 0xFF01, "SSL_read", REQUEST[:10]))
    p.record(record(2, 100, 0xAA, 0, "SSL_read", REQUEST[10:]))
    segs = [g for g in parsed(out) if g.payload]
    assert b"".join(g.payload for g in segs) == REQUEST
    assert {(str(g.dst), g.dport) for g in segs} == {("10.77.1.2", 8443)}
    assert segs[1].seq == segs[0].seq + 10 and p.unknown == 0


def test_unknown_connection_is_written_and_said(plaintext):
    p, out = plaintext
    p.record(record(1, 100, 0xBB, 0, "SSL_read", b"x" * 7))
    assert p.unknown == 1 and out[-1][1].endswith("conn=unknown")
    assert parsed(out)[-1].payload == b"x" * 7


def test_both_ends_in_the_container_are_written_once(plaintext):
    p, out = plaintext
    p.record(record(1, 200, 0x10, 0xC1, "SSL_write", REQUEST, local=("10.77.1.1", 40404),
                    remote=("10.77.1.2", 8443)))  # the client end, first
    p.record(record(2, 100, 0x20, 0xD1, "SSL_read", REQUEST))  # the server end: the same bytes
    p.record(record(3, 100, 0x20, 0xD1, "SSL_write", RESPONSE))
    p.record(record(4, 200, 0x10, 0xC1, "SSL_read", RESPONSE, local=("10.77.1.1", 40404),
                    remote=("10.77.1.2", 8443)))
    payloads = [g.payload for g in parsed(out) if g.payload]
    assert payloads == [REQUEST, RESPONSE] and p.duplicates == 2


def test_a_new_socket_on_an_old_tuple_is_a_new_connection(plaintext):
    p, out = plaintext
    p.record(record(1, 100, 0xAA, 0xFF01, "SSL_read", REQUEST))
    p.record(record(2, 100, 0xAB, 0xFF02, "SSL_read", REQUEST))
    syns = [g for g in parsed(out) if g.flags == synth.SYN]
    assert len(syns) == 2 and syns[0].seq != syns[1].seq


def test_ipv4_mapped_addresses_are_written_as_ipv4(plaintext):
    p, out = plaintext
    p.record(record(1, 100, 0xAA, 0xFF01, "SSL_read", REQUEST, local=("::ffff:10.77.1.2", 8443),
                    remote=("::ffff:10.77.1.1", 40404), family=socket.AF_INET6))
    seg = parsed(out)[-1]
    assert (str(seg.src), str(seg.dst)) == ("10.77.1.1", "10.77.1.2")


def test_chunks_of_one_call_and_a_lost_chunk(plaintext):
    p, out = plaintext
    body = bytes(range(256)) * 200
    p.record(record(1, 100, 0xAA, 0xFF01, "SSL_write_ex", body[:16384], total=len(body)))
    # the second chunk (16384..32768) was lost in the ring; the third arrives
    p.record(record(1, 100, 0xAA, 0xFF01, "SSL_write_ex", body[32768:], total=len(body), offset=32768))
    segs = [g for g in parsed(out) if g.payload]
    assert segs[1].seq - segs[0].seq == 32768 and p.calls == 1


def test_ciphertext_from_the_first_plaintext_on_is_the_plaintexts(plaintext):
    """capture's net side asks written(): packets before the first plaintext (the handshakes) are
    written, later ones are not; a later SYN ends the connection; before_new runs first."""
    p, out = plaintext
    order = []
    p.before_new = lambda: order.append("flush")
    p.emit = lambda *a, **k: order.append("packet")
    client = (ipaddress.ip_address("10.77.1.1"), 40404)
    server = (ipaddress.ip_address("10.77.1.2"), 8443)
    assert not p.written(client, server, 50)
    p.record(record(100, 100, 0xAA, 0xFF01, "SSL_read", REQUEST))
    assert order[:2] == ["flush", "packet"]
    assert not p.written(client, server, 99, syn=True)  # its own handshake, sent before
    assert not p.written(server, client, 99)
    assert p.written(client, server, 101) and p.written(server, client, 150)
    assert not p.written(client, server, 200, syn=True)  # a new connection on the same ports
    assert not p.written(client, server, 201)


@given(st.lists(st.tuples(st.sampled_from(["SSL_read_ex", "SSL_write_ex"]), st.integers(1, 40000),
                          st.integers(0, 3)), min_size=1, max_size=12))
def test_whole_calls_take_the_same_sequence_numbers_as_pieces(calls):
    """The fast path (a whole call in one record: Connection.whole_call) writes the packets that
    Connection.data writes, whatever came before it: pieces of calls, calls with a lost piece."""
    outs = []
    for whole in (synth.Connection.whole_call, lambda c, fc, payload: c.data(fc, object(), len(payload), 0,
                                                                              payload)[0][1]):
        out = []
        p = tls.Plaintext(lambda ts, packet, comment, inbound: out.append((packet, inbound)), lambda ev: "x",
                          random.Random(4))
        p._listens = lambda pid, port: port == 8443
        original, synth.Connection.whole_call = synth.Connection.whole_call, whole
        try:
            for ts, (call, size, lose) in enumerate(calls):
                data = bytes(range(256)) * (size // 256 + 1)
                data = data[:size]
                chunks = [data[at:at + prog.CHUNK] for at in range(0, size, prog.CHUNK)]
                for index, chunk in enumerate(chunks):
                    if len(chunks) > 1 and index == lose:
                        continue  # lost in the ring
                    p.record(record(ts, 100, 0xAA, 0xFF01, call, chunk, total=size, offset=index * prog.CHUNK))
        finally:
            synth.Connection.whole_call = original
        outs.append(out)
    assert outs[0] == outs[1]


def test_a_connection_whose_first_plaintext_is_the_answer_is_counted(plaintext):
    """A keep-alive connection idle in SSL_read when the probes attach: that read's return is
    never seen (no uprobe saw it enter), so the server's answer comes first; it is counted."""
    p, out = plaintext
    p.record(record(1, 100, 0xAA, 0xFF01, "SSL_read_ex", REQUEST))
    p.record(record(2, 100, 0xAA, 0xFF01, "SSL_write_ex", RESPONSE))
    assert p.server_first == 0
    p.record(record(3, 100, 0xAB, 0xFF02, "SSL_write_ex", RESPONSE, remote=("10.77.1.1", 40406)))
    p.record(record(4, 200, 0xAC, 0xFF03, "SSL_read_ex", RESPONSE, local=("10.77.1.1", 40408),
                    remote=("10.77.1.9", 443)))  # a client in the container reading an answer first
    assert p.server_first == 2
