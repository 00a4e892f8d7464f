"""capture's FLOW records (a flow's first packet, or every packet with --pid/--tls/--packet-comments)
as the BPF program lays them out, handled without a kernel: what goes to the file, and the
clock the TLS ciphertext check gets."""
import struct
import types

from bpfhook import capture, pcapng
from bpfhook.programs import capture as net_program
from bpfhook.records import flat_struct

# IPv4 TCP 10.0.0.1:40000 -> 10.0.0.2:443, SYN, 5 bytes of payload
PACKET = bytes.fromhex("4500002d000040004006000a0a0000010a000002" "9c4001bb" "00000001" "00000000" "5002ffff00000000") \
    + b"hello"
CLOCK = 1_700_000_000_000_000_000  # CLOCK_REALTIME - CLOCK_MONOTONIC the program adds
KTIME = 123_456_789


def flow_record(packet, ts, flags=pcapng.INBOUND, cgroup_id=5, cookie=9):
    """A FLOW record as programs/capture.py writes it: FlowHead, then the whole EPB."""
    caplen = len(packet)
    length = net_program.record_size(caplen)
    head = flat_struct(net_program.FlowHead).pack(net_program.FLOW, cgroup_id, cookie, 0, 0, bytes(32))
    epb = struct.pack("<IIIIIII", net_program.EPB, length, 0, ts >> 32, ts & 0xFFFFFFFF, caplen, caplen)
    epb += packet + bytes(-caplen % 4) + struct.pack("<II", net_program.OPT_EPB_FLAGS, flags)
    epb += bytes(length - len(epb) - 4) + struct.pack("<I", length)
    return memoryview(head + epb)


def stub(tmp_path, **options):
    """A Capture with its writing parts only: no maps, programs or readers."""
    cap = object.__new__(capture.Capture)
    cap.target = capture.Target("web", "/lab/web", 5)
    cap.pid, cap.tls, cap._per_packet, cap._clock = 0, False, True, CLOCK
    cap.counters = capture.Counters()
    cap.owners = types.SimpleNamespace(lookup=lambda cookie, tuple5, inbound: (42, "server"))
    cap._comments, cap._cgroup_paths, cap._said, cap._unsaid = {}, {5: "/lab/web"}, {}, None
    for name, value in options.items():
        setattr(cap, name, value)
    cap.writer = pcapng.Writer(str(tmp_path / "c.pcapng"))
    cap.writer.interface(pcapng.LINKTYPE_RAW, "web:net")
    return cap


def test_a_flow_record_is_its_packet_with_the_owners_comment(tmp_path):
    cap = stub(tmp_path)
    cap._on_flow(flow_record(PACKET, CLOCK + KTIME))
    cap.writer.close()
    [packet] = [r for r in pcapng.Reader(str(tmp_path / "c.pcapng")) if isinstance(r, pcapng.Packet)]
    assert packet.data == PACKET and packet.ts_ns == CLOCK + KTIME and packet.direction == "in"
    assert packet.comment == "pid=42 comm=server cgroup=/lab/web container=web"
    assert cap.counters.packets == 1


def test_the_tls_ciphertext_check_gets_the_kernels_clock(tmp_path):
    """Plaintext.written compares with bpf_ktime_get_ns: the record's EPB time less the offset."""
    seen = []
    tls = types.SimpleNamespace(written=lambda a, b, ts, syn: seen.append((ts, syn)) or True)
    cap = stub(tmp_path, tls=True)
    cap.counters.tls = tls
    cap._on_flow(flow_record(PACKET, CLOCK + KTIME))
    assert seen == [(KTIME, True)]
    assert cap.counters.ciphertext_left_out == 1 and cap.counters.packets == 0
