"""flows: TCP reassembly (order, retransmission, gaps, FIN/RST), UDP, Unix-socket conversations,
from synthetic pcapng files written with our Writer."""
import struct

import pytest

from bpfhook import flows, pcapng
from tests.pcapfiles import CLIENT, MS, SERVER, T0, ethernet, handshake, tcp, udp, write

def only_flow(path):
    cap = flows.read(path)
    assert len(cap.flows) == 1, cap.flows
    return cap.flows[0]


def test_in_order_stream_turns_and_fin(tmp_path):
    pkts = handshake() + [
        (10, tcp(CLIENT, SERVER, 1001, b"hello ")),
        (11, tcp(CLIENT, SERVER, 1007, b"world")),
        (20, tcp(SERVER, CLIENT, 5001, b"reply")),
        (30, tcp(CLIENT, SERVER, 1012, b"again")),
        (40, tcp(CLIENT, SERVER, 1017, flags=flows.FIN | flows.ACK)),
    ]
    f = only_flow(write(tmp_path / "f.pcapng", pkts))
    assert (f.kind, f.client, f.server) == ("tcp", "10.77.1.1:40000", "10.77.1.2:8080")
    c2s, s2c = f.streams[flows.C2S], f.streams[flows.S2C]
    assert c2s.data == b"hello worldagain" and s2c.data == b"reply"
    assert c2s.syn and c2s.fin and not c2s.rst and not c2s.gaps and not f.problems()
    assert [(m.direction, m.data) for m in f.messages] == [
        ("c2s", b"hello world"), ("s2c", b"reply"), ("c2s", b"again")]
    assert [m.ts_ns for m in f.messages] == [T0 + 10 * MS, T0 + 20 * MS, T0 + 30 * MS]
    assert f.packets == {"c2s": 6, "s2c": 2} and f.bytes == {"c2s": 16, "s2c": 5}
    assert f.meta == {"pid": "7", "comm": "srv", "cgroup": "/x", "container": "web"}
    assert f.duration == pytest.approx(0.040)


def test_out_of_order_retransmission_and_gap(tmp_path):
    pkts = handshake() + [
        (10, tcp(CLIENT, SERVER, 1006, b"world")),  # arrives before "hello"
        (11, tcp(CLIENT, SERVER, 1001, b"hello")),
        (12, tcp(CLIENT, SERVER, 1001, b"hello")),  # retransmitted whole
        (13, tcp(CLIENT, SERVER, 1009, b"ld!!")),  # partly seen ("ld")
        (14, tcp(CLIENT, SERVER, 1023, b"after-gap")),  # 1013..1022 never captured
        (15, tcp(CLIENT, SERVER, 1032, flags=flows.RST)),
    ]
    f = only_flow(write(tmp_path / "f.pcapng", pkts))
    s = f.streams[flows.C2S]
    assert s.data == b"helloworld!!after-gap"
    assert s.contiguous() == b"helloworld!!"
    assert s.gaps == [(12, 10)]
    assert s.out_of_order == 1 and s.retransmitted_packets == 1 and s.retransmitted_bytes == 5 + 2
    assert s.rst and not s.fin
    # bytes behind the hole became readable only when "hello" arrived
    assert [(c.offset, c.ts_ns) for c in s.chunks][:2] == [(0, T0 + 11 * MS), (5, T0 + 11 * MS)]
    assert s.ts_at(22) == T0 + 14 * MS
    assert "1 gap(s), 10 bytes missing" in " ".join(f.problems())


def test_no_handshake_seq_wraps_and_fin_gap(tmp_path):
    top = (1 << 32) - 3
    pkts = [(0, tcp(CLIENT, SERVER, top + 3, b"def")),  # wrapped, and before its predecessor
            (1, tcp(CLIENT, SERVER, top, b"abc")),
            (2, tcp(CLIENT, SERVER, top + 10, flags=flows.FIN | flows.ACK))]
    s = only_flow(write(tmp_path / "f.pcapng", pkts)).streams[flows.C2S]
    assert s.data == b"abcdef" and s.out_of_order == 1
    assert s.gaps == [(6, 4)]  # the FIN says 4 more bytes were sent


def test_client_is_the_syn_sender_even_when_the_server_speaks_first(tmp_path):
    pkts = handshake() + [(5, tcp(SERVER, CLIENT, 5001, b"220 banner\r\n")),
                          (6, tcp(CLIENT, SERVER, 1001, b"HELO x\r\n"))]
    f = only_flow(write(tmp_path / "f.pcapng", pkts[1:]))  # the SYN itself was missed: SYN-ACK decides
    assert f.client == "10.77.1.1:40000"
    assert [m.direction for m in f.messages] == ["s2c", "c2s"]


def test_reused_five_tuple_is_a_new_connection(tmp_path):
    first = handshake(1000) + [(3, tcp(CLIENT, SERVER, 1001, b"one")),
                               (4, tcp(CLIENT, SERVER, 1004, flags=flows.FIN | flows.ACK))]
    second = [(ms + 10, p) for ms, p in handshake(90000)] + [(15, tcp(CLIENT, SERVER, 90001, b"two"))]
    cap = flows.read(write(tmp_path / "f.pcapng", first + second))
    assert [f.streams[flows.C2S].data for f in cap.flows] == [b"one", b"two"]
    assert [f.id for f in cap.flows] == [1, 2]


def test_udp_ipv6_and_ethernet(tmp_path):
    c6, s6 = ("fd77::1:1", 5353), ("fd77::1:2", 53)
    pkts = [(0, ethernet(udp(c6, s6, b"query"))), (1, ethernet(udp(s6, c6, b"answer"))),
            (2, ethernet(udp(c6, s6, b"q2"))), (3, b"\xff" * 60)]  # not IP: ignored, counted
    cap = flows.read(write(tmp_path / "f.pcapng", pkts, linktype=flows.LINKTYPE_ETHERNET))
    (f,) = cap.flows
    assert cap.ignored == 1 and cap.packets == 4
    assert (f.kind, f.client, f.server) == ("udp", "[fd77::1:1]:5353", "[fd77::1:2]:53")
    assert [(m.direction, m.data) for m in f.messages] == [("c2s", b"query"), ("s2c", b"answer"), ("c2s", b"q2")]


def test_ipv4_fragments_are_ignored():
    pkt = bytearray(udp(CLIENT, SERVER, b"x"))
    pkt[6:8] = struct.pack(">H", 0x2000)  # more fragments
    assert flows.parse_packet(pcapng.LINKTYPE_RAW, bytes(pkt)) is None
    assert flows.parse_packet(pcapng.LINKTYPE_RAW, b"\x45" + b"\0" * 10) is None


def test_unix_stream_from_the_server_end(tmp_path):
    # (direction, sock_type, pid, tid, peer_pid, fd, path, peer_path, payload): 1 = received by pid
    path = b"/run/app.sock"
    pkts = [(0, (1, 1, 7, 7, 9, 4, path, b"", b"GET / HTTP/1.1\r\n")),
            (1, (1, 1, 7, 7, 9, 4, path, b"", b"\r\n")),
            (2, (0, 1, 7, 7, 9, 4, path, b"", b"HTTP/1.1 204 No Content\r\n\r\n")),
            (3, (1, 2, 7, 7, 0, 5, b"\0logs", b"", b"datagram")),
            # the client's own end of the first conversation, also captured
            (4, (0, 1, 9, 9, 7, 3, b"", path, b"GET / HTTP/1.1\r\n\r\n"))]
    cap = flows.read(write(tmp_path / "f.pcapng", pkts))
    stream, dgram, client_end = cap.flows
    assert (stream.kind, stream.client, stream.server, stream.perspective) == (
        "unix-stream", "pid 9", "/run/app.sock (pid 7)", "server")
    assert stream.streams["c2s"].data == b"GET / HTTP/1.1\r\n\r\n"
    assert [(m.direction, m.data) for m in stream.messages] == [
        ("c2s", b"GET / HTTP/1.1\r\n\r\n"), ("s2c", b"HTTP/1.1 204 No Content\r\n\r\n")]
    assert (dgram.kind, dgram.server, dgram.streams) == ("unix-dgram", "@logs (pid 7)", None)
    assert [m.data for m in dgram.messages] == [b"datagram"]
    assert client_end.perspective == "client" and client_end.duplicate and not stream.duplicate
    assert client_end.messages[0].direction == "c2s"


def test_not_pcapng(tmp_path):
    bad = tmp_path / "bad.pcapng"
    bad.write_bytes(b"not a capture at all, no, not at all")
    with pytest.raises(pcapng.PcapngError, match="not a pcapng"):
        flows.read(str(bad))


def test_a_connection_caught_without_its_handshake_takes_the_server_from_the_others(tmp_path):
    """Its first packet is the server's answer: the listening endpoint other connections were
    opened to (by SYN) still makes that side the server."""
    other = ("10.77.1.1", 40001)
    pkts = handshake() + [(3, tcp(CLIENT, SERVER, 1001, b"GET / HTTP/1.1\r\n\r\n"))]
    pkts += [(10, tcp(SERVER, other, 9001, b"HTTP/1.1 200 OK\r\n\r\n")), (11, tcp(other, SERVER, 7001, b"next"))]
    first, second = flows.read(write(tmp_path / "f.pcapng", pkts)).flows
    assert (second.client, second.server) == ("10.77.1.1:40001", "10.77.1.2:8080")
    assert [m.direction for m in second.messages] == ["s2c", "c2s"]


def test_records_written_out_of_time_order_are_put_back(tmp_path):
    """Per-CPU buffers write late: a connection's handshake and request after its answer."""
    pkts = handshake() + [(3, tcp(CLIENT, SERVER, 1001, b"GET / HTTP/1.1\r\n\r\n")),
                          (4, tcp(SERVER, CLIENT, 5001, b"HTTP/1.1 204 No\r\n\r\n")),
                          (5, tcp(CLIENT, SERVER, 1019, flags=flows.FIN | flows.ACK))]
    path = tmp_path / "f.pcapng"
    with pcapng.Writer(str(path)) as w:
        net = w.interface(pcapng.LINKTYPE_RAW, "web:net")
        for ms, p in pkts[4:] + pkts[:4]:  # the answer and the FIN first, as a second CPU's buffer flushed late
            w.packet(net, T0 + ms * MS, p)
    (f,) = flows.read(str(path)).flows
    assert f.client == "10.77.1.1:40000" and [m.direction for m in f.messages] == ["c2s", "s2c"]
