"""TCP/IP packets around bytes that never crossed the wire in the clear (TLS plaintext).

Each connection gets a three-way handshake when it is first seen, then its
bytes as segments of a stream per direction with consistent sequence and
acknowledgement numbers, on the connection's real addresses and ports:
tshark's TCP reassembly and HTTP dissector, and bpfhook.flows, read them
as they read a clear connection. Bytes the capture lost leave a hole in the
sequence space (a gap, which readers report) rather than a splice.

Checksums are real: the one's-complement sum of 16-bit words equals the
number the bytes spell in base 2**16 modulo 0xFFFF (2**16 = 1 mod 0xFFFF),
which Python's big integers compute at C speed.
"""
import ipaddress
import random

import construct as c

from bpfhook.records import flat_struct

MAX_SEGMENT = 65495  # payload bytes per packet: an IPv4 total length fits 16 bits
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
IPPROTO_TCP = 6
TTL = 64
WINDOW = 65535
_SEQ = 1 << 32

# The headers synthesized, without options (RFC 791, 8200, 9293), in network byte order.
Ipv4Header = c.Struct(
    "version_ihl" / c.Int8ub, "tos" / c.Int8ub, "total_length" / c.Int16ub, "ident" / c.Int16ub,
    "flags_fragment" / c.Int16ub, "ttl" / c.Int8ub, "protocol" / c.Int8ub, "checksum" / c.Int16ub,
    "src" / c.Bytes(4), "dst" / c.Bytes(4),
)
assert Ipv4Header.sizeof() == 20
Ipv6Header = c.Struct(
    "version_class_flow" / c.Int32ub, "payload_length" / c.Int16ub, "next_header" / c.Int8ub,
    "hop_limit" / c.Int8ub, "src" / c.Bytes(16), "dst" / c.Bytes(16),
)
assert Ipv6Header.sizeof() == 40
TcpHeader = c.Struct(
    "sport" / c.Int16ub, "dport" / c.Int16ub, "seq" / c.Int32ub, "ack" / c.Int32ub,
    "data_offset" / c.Int8ub, "flags" / c.Int8ub, "window" / c.Int16ub, "checksum" / c.Int16ub,
    "urgent" / c.Int16ub,
)
assert TcpHeader.sizeof() == 20
# a packet's headers in one pack
_HEADERS = {4: flat_struct(c.Struct("ip" / Ipv4Header, "tcp" / TcpHeader)),
            6: flat_struct(c.Struct("ip" / Ipv6Header, "tcp" / TcpHeader))}


def ones_sum(data):
    """The one's-complement sum of `data` as big-endian 16-bit words (odd length: a zero pad)."""
    n = int.from_bytes(data, "big") << (len(data) & 1) * 8  # an odd length's zero pad
    r = n % 0xFFFF
    return r if r or not n else 0xFFFF


def _fold(total):
    r = total % 0xFFFF
    return r if r or not total else 0xFFFF


class Way:
    """One direction between two endpoints: what every packet that way shares (addresses, ports,
    their part of the checksums), worked out once."""

    __slots__ = ("v4", "src", "dst", "ports", "tcp_sum", "ip_sum")

    def __init__(self, src, dst, sport, dport):
        src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        self.v4 = src.version == 4
        self.src, self.dst = src.packed, dst.packed
        self.ports = (sport, dport)
        # the TCP checksum's fixed words: the pseudo-header's addresses and protocol, the ports
        self.tcp_sum = ones_sum(self.src + self.dst) + sport + dport + IPPROTO_TCP
        # the IPv4 header checksum's: version/IHL/TOS, DF, TTL/protocol, the addresses
        self.ip_sum = ones_sum(self.src + self.dst) + 0x4500 + 0x4000 + (TTL << 8 | IPPROTO_TCP)

    def packet(self, seq, ack, flags, payload=b"", ident=0):
        """An IPv4 or IPv6 packet carrying one TCP segment."""
        length = 20 + len(payload)
        seq, ack = seq % _SEQ, ack % _SEQ
        n = int.from_bytes(payload, "big") << (len(payload) & 1) * 8
        total = (self.tcp_sum + length + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
                 + (5 << 12 | flags) + WINDOW + (n % 0xFFFF or (0xFFFF if n else 0)))
        tcp_check = ~_fold(total) & 0xFFFF
        sport, dport = self.ports
        if self.v4:
            ident &= 0xFFFF
            return _HEADERS[4].pack(0x45, 0, 20 + length, ident, 0x4000, TTL, IPPROTO_TCP,
                                    ~_fold(self.ip_sum + 20 + length + ident) & 0xFFFF, self.src, self.dst,
                                    sport, dport, seq, ack, 5 << 4, flags, WINDOW, tcp_check, 0) + payload
        return _HEADERS[6].pack(6 << 28, length, IPPROTO_TCP, TTL, self.src, self.dst,
                                sport, dport, seq, ack, 5 << 4, flags, WINDOW, tcp_check, 0) + payload


def tcp_packet(src, dst, sport, dport, seq, ack, flags, payload=b"", ident=0):
    """An IPv4 or IPv6 packet (by the addresses' version) carrying one TCP segment."""
    return Way(src, dst, sport, dport).packet(seq, ack, flags, payload, ident)


class Direction:
    """One direction of a synthesized stream: where its bytes stand in sequence space."""

    def __init__(self, isn):
        self.isn = isn
        self.pos = 0  # stream offset of the next byte
        self.call = None  # (call id, stream offset of the call's first byte, bytes the call moved)

    def place(self, call_id, total, offset, length):
        """The stream offset of `length` bytes at `offset` in call `call_id` of `total` bytes.
        A new call starts where the last one ended, all of it: bytes of it never seen are a gap."""
        if self.call is None or self.call[0] != call_id:
            if self.call is not None:
                self.pos = max(self.pos, self.call[1] + self.call[2])
            self.call = (call_id, self.pos, total)
        start = self.call[1] + offset
        self.pos = max(self.pos, start + length)
        return start

    @property
    def next_seq(self):
        return (self.isn + 1 + self.pos) % _SEQ


class Connection:
    """A TCP connection seen from its bytes: client and server endpoints, a stream each way."""

    def __init__(self, client, server, rng=random):
        self.client, self.server = client, server  # (ip address, port)
        self.dirs = {True: Direction(rng.getrandbits(32)), False: Direction(rng.getrandbits(32))}
        self.ways = {True: Way(client[0], server[0], client[1], server[1]),
                     False: Way(server[0], client[0], server[1], client[1])}
        self._ident = rng.getrandbits(16)

    def _packet(self, from_client, seq, flags, payload=b""):
        ack = self.dirs[not from_client].next_seq if flags & ACK else 0
        self._ident += 1
        return self.ways[from_client].packet(seq, ack, flags, payload, self._ident)

    def handshake(self):
        """SYN, SYN-ACK, ACK: [(from_client, packet)]."""
        c, s = self.dirs[True], self.dirs[False]
        return [(True, self._packet(True, c.isn, SYN)),
                (False, self._packet(False, s.isn, SYN | ACK)),
                (True, self._packet(True, c.isn + 1, ACK))]

    def data(self, from_client, call_id, total, offset, payload):
        """The segments carrying `payload`, bytes [offset, offset + len) of a call that moved
        `total` bytes: [(from_client, packet)]."""
        d = self.dirs[from_client]
        start = d.place(call_id, total, offset, len(payload))
        if len(payload) <= MAX_SEGMENT:  # a ring record always is
            return [(from_client, self._packet(from_client, d.isn + 1 + start, PSH | ACK, payload))]
        view = memoryview(payload)
        return [(from_client, self._packet(from_client, d.isn + 1 + start + at, PSH | ACK, view[at:at + MAX_SEGMENT]))
                for at in range(0, len(payload), MAX_SEGMENT)]

    def whole_call(self, from_client, payload):
        """The one packet of a call whose bytes (at most MAX_SEGMENT) came whole in one record: the
        common case of data(), without its bookkeeping of calls that come in pieces."""
        d, other = self.dirs[from_client], self.dirs[not from_client]
        if d.call is not None:
            d.pos = max(d.pos, d.call[1] + d.call[2])
            d.call = None
        start = d.pos
        d.pos = start + len(payload)
        self._ident += 1
        return self.ways[from_client].packet(d.isn + 1 + start, other.isn + 1 + other.pos, PSH | ACK, payload,
                                             self._ident)
