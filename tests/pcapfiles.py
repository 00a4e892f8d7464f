"""Synthetic pcapng files for tests: TCP/UDP packets and Unix-socket records written with our Writer."""
import ipaddress
import struct

from bpfhook import flows, pcapng

CLIENT, SERVER = ("10.77.1.1", 40000), ("10.77.1.2", 8080)
T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def ip_packet(src, dst, proto, l4):
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version == 4:
        head = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, proto, 0, s.packed, d.packed)
    else:
        head = struct.pack(">IHBB16s16s", 6 << 28, len(l4), proto, 64, s.packed, d.packed)
    return head + l4


def tcp(src, dst, seq, payload=b"", flags=flows.ACK, ack=0):
    return ip_packet(src, dst, 6, struct.pack(">HHIIHHHH", src[1], dst[1], seq % (1 << 32), ack,
                                              (5 << 12) | flags, 65535, 0, 0) + payload)


def udp(src, dst, payload):
    return ip_packet(src, dst, 17, struct.pack(">HHHH", src[1], dst[1], 8 + len(payload), 0) + payload)


def ethernet(packet):
    kind = 0x0800 if packet[0] >> 4 == 4 else 0x86DD
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack(">H", kind) + packet + b"\0" * max(0, 46 - len(packet))


def write(path, packets, linktype=pcapng.LINKTYPE_RAW, comment="pid=7 comm=srv cgroup=/x container=web"):
    """packets: (ms, bytes) for the network interface, or (ms, UdsRecord args tuple) for the unix one."""
    with pcapng.Writer(str(path)) as w:
        net = w.interface(linktype, "web:net")
        unix = w.interface(pcapng.LINKTYPE_USER0, "web:unix")
        for ms, data in sorted(packets, key=lambda p: p[0]):  # a capture is in time order
            if isinstance(data, tuple):
                w.packet(unix, T0 + int(ms * MS), pcapng.encode_uds(*data), comment=comment)
            else:
                w.packet(net, T0 + int(ms * MS), data, comment=comment)
    return str(path)


def handshake(isn_c=1000, isn_s=5000, client=CLIENT, server=SERVER):
    return [(0, tcp(client, server, isn_c, flags=flows.SYN)),
            (1, tcp(server, client, isn_s, flags=flows.SYN | flows.ACK, ack=isn_c + 1)),
            (2, tcp(client, server, isn_c + 1, ack=isn_s + 1))]


def conversation(client, server, turns, isn_c=1000, isn_s=5000, start_ms=0, close=True):
    """(ms, packet) of one whole TCP connection: handshake at start_ms, then turns
    [(ms, "c" or "s", bytes)] as one segment each, then both FINs after the last turn."""
    pkts = [(start_ms + ms, p) for ms, p in handshake(isn_c, isn_s, client, server)]
    seq = {"c": isn_c + 1, "s": isn_s + 1}
    for ms, side, data in turns:
        src, dst = (client, server) if side == "c" else (server, client)
        pkts.append((ms, tcp(src, dst, seq[side], data)))
        seq[side] += len(data)
    if close:
        last = max((ms for ms, _s, _d in turns), default=start_ms) + 0.5
        pkts += [(last, tcp(client, server, seq["c"], flags=flows.FIN | flows.ACK)),
                 (last + 0.1, tcp(server, client, seq["s"], flags=flows.FIN | flows.ACK))]
    return pkts
