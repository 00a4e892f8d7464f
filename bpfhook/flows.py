"""Flows of a pcapng capture: TCP streams reassembled, UDP datagrams, Unix-socket conversations.

Shared by `bpfhook analyze` and `bpfhook replay`. Reads our own files
(LINKTYPE_RAW packets and LINKTYPE_USER0 Unix-socket records) and tcpdump's
(Ethernet, Linux cooked capture). A flow's client is the side that sent
the SYN (or, without one, the side a SYN-ACK went to, else the first
packet's sender). TLS plaintext that capture --tls wrote as TCP packets
(comment tls=plaintext) is a flow apart from the ciphertext of the same
connection, which is then marked tls="ciphertext" with its twin's id.
Each direction of a TCP connection is put back in sequence order; what
was sent twice, what came out of order and what is missing (gaps: never
captured, cut at snaplen) is counted, never papered over.

A flow's `messages` are its turns: consecutive bytes one side sent before
the other side spoke, with the time they became available in order. Replay
sends the client's turns; analyze reads HTTP from the streams.
"""
import bisect
import dataclasses
import ipaddress
import struct

from bpfhook import pcapng

LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_IPV4, LINKTYPE_IPV6 = 1, 113, 228, 229
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8
IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPV6_EXTENSIONS = (0, 43, 60)  # hop-by-hop, routing, destination options: skipped to reach TCP/UDP
IPV6_FRAGMENT = 44
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
C2S, S2C = "c2s", "s2c"  # client to server, server to client
STREAM_KINDS = ("tcp", "unix-stream", "unix-seqpacket")
_SEQ = 1 << 32


@dataclasses.dataclass
class Segment:
    """One TCP or UDP packet, parsed."""
    index: int  # position in the file: ties in time keep file order
    ts_ns: int
    proto: int
    src: object  # ipaddress
    sport: int
    dst: object
    dport: int
    payload: bytes
    seq: int = 0
    flags: int = 0
    meta: dict = dataclasses.field(default_factory=dict)  # pid, comm, cgroup, container from the comment


def _l3_offset(linktype, data):
    """(offset of the IP header, ethertype or None for RAW) or None when the frame carries no IP."""
    if linktype in (pcapng.LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0
    if linktype == LINKTYPE_ETHERNET:
        pos, kind = 14, None
        if len(data) >= 14:
            kind = struct.unpack_from(">H", data, 12)[0]
        while kind in (ETH_P_8021Q, ETH_P_8021AD) and len(data) >= pos + 4:
            kind = struct.unpack_from(">H", data, pos + 2)[0]
            pos += 4
        return pos if kind in (ETH_P_IP, ETH_P_IPV6) else None
    if linktype == LINKTYPE_LINUX_SLL and len(data) >= 16:
        return 16 if struct.unpack_from(">H", data, 14)[0] in (ETH_P_IP, ETH_P_IPV6) else None
    return None


def parse_packet(linktype, data, index=0, ts_ns=0, meta=None):
    """A Segment, or None for what is not an unfragmented TCP/UDP packet over IPv4/IPv6."""
    pos = _l3_offset(linktype, data)
    if pos is None or len(data) < pos + 20:
        return None
    version = data[pos] >> 4
    if version == 4:
        ihl = (data[pos] & 0x0F) * 4
        total, frag = struct.unpack_from(">H2xH", data, pos + 2)
        if frag & 0x3FFF:  # a fragment: its TCP/UDP header is elsewhere
            return None
        proto, end = data[pos + 9], pos + total
        src, dst = data[pos + 12:pos + 16], data[pos + 16:pos + 20]
        pos += ihl
    elif version == 6 and len(data) >= pos + 40:
        proto, end = data[pos + 6], pos + 40 + struct.unpack_from(">H", data, pos + 4)[0]
        src, dst = data[pos + 8:pos + 24], data[pos + 24:pos + 40]
        pos += 40
        for _ in range(8):  # a bounded walk over extension headers
            if proto not in IPV6_EXTENSIONS or len(data) < pos + 2:
                break
            proto, pos = data[pos], pos + 8 + data[pos + 1] * 8
        if proto == IPV6_FRAGMENT:
            return None
    else:
        return None
    end = min(end, len(data))  # Ethernet pads short frames; snaplen may cut
    src, dst = ipaddress.ip_address(bytes(src)), ipaddress.ip_address(bytes(dst))
    if proto == IPPROTO_TCP and end >= pos + 20:
        sport, dport, seq, _ack, off_flags = struct.unpack_from(">HHIIH", data, pos)
        return Segment(index, ts_ns, proto, src, sport, dst, dport, bytes(data[pos + (off_flags >> 12) * 4:end]),
                       seq, off_flags & 0x3F, meta or {})
    if proto == IPPROTO_UDP and end >= pos + 8:
        sport, dport = struct.unpack_from(">HH", data, pos)
        return Segment(index, ts_ns, proto, src, sport, dst, dport, bytes(data[pos + 8:end]), meta=meta or {})
    return None


# -- reassembly ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Chunk:
    offset: int  # stream offset of data[0]
    ts_ns: int  # when these bytes were available in order
    data: bytes


@dataclasses.dataclass
class Stream:
    """One direction of a byte stream, in order, with what went wrong on the way."""
    chunks: list = dataclasses.field(default_factory=list)
    gaps: list = dataclasses.field(default_factory=list)  # (offset, length) never captured
    packets: int = 0
    bytes: int = 0  # payload bytes seen, retransmissions included
    retransmitted_packets: int = 0  # all of their bytes had been seen before
    retransmitted_bytes: int = 0
    out_of_order: int = 0  # new bytes arriving behind later ones
    syn: bool = False
    fin: bool = False
    rst: bool = False

    @property
    def length(self):
        return sum(len(c.data) for c in self.chunks)

    @property
    def data(self):
        """Every byte captured in order; gaps are left out (see `gaps`)."""
        return b"".join(c.data for c in self.chunks)

    def contiguous(self):
        """The bytes from the start up to the first gap."""
        out = []
        for c in self.chunks:
            if out and c.offset != out[-1].offset + len(out[-1].data) or not out and c.offset:
                break
            out.append(c)
        return b"".join(c.data for c in out)

    def ts_at(self, offset):
        """When the byte at `offset` was available (the chunk holding it, else the next one)."""
        if not self.chunks:
            return None
        i = bisect.bisect_right([c.offset for c in self.chunks], offset) - 1
        return self.chunks[max(i, 0)].ts_ns


def _signed(n):
    return (n + (1 << 31)) % _SEQ - (1 << 31)


def reassemble(segments):
    """A Stream from one direction's TCP segments, in capture order."""
    s = Stream()
    syn = next((g for g in segments if g.flags & SYN), None)
    data = [g for g in segments if g.payload]
    if syn is not None:
        base = syn.seq + 1
    elif data:
        first = data[0].seq
        base = first + min(_signed(g.seq - first) for g in data)
    else:
        base = segments[0].seq if segments else 0
    covered = []  # merged [start, end) intervals seen so far, in capture order
    top = 0
    for g in segments:
        s.packets += 1
        s.syn |= bool(g.flags & SYN)
        s.rst |= bool(g.flags & RST)
        if g.flags & FIN:
            s.fin = True
        if not g.payload:
            continue
        start = _signed(g.seq - base)
        end = start + len(g.payload)
        s.bytes += len(g.payload)
        new = _uncovered(covered, start, end)
        if not new:
            s.retransmitted_packets += 1
            s.retransmitted_bytes += len(g.payload)
        else:
            s.retransmitted_bytes += len(g.payload) - new
            s.out_of_order += start < top and _uncovered(covered, start, min(end, top)) > 0  # fills a hole
        _cover(covered, start, end)
        top = max(top, end)
    pos, ready = 0, 0
    for g in sorted(data, key=lambda g: (_signed(g.seq - base), g.index)):
        start = _signed(g.seq - base)
        end = start + len(g.payload)
        if end <= pos:
            continue
        if start > pos:
            s.gaps.append((pos, start - pos))
            pos = start
        ready = max(ready, g.ts_ns)  # bytes behind a hole are in order only once it is filled
        s.chunks.append(Chunk(pos, ready, g.payload[pos - start:]))
        pos = end
    fin = next((g for g in segments if g.flags & FIN), None)
    if fin is not None:
        fin_at = _signed(fin.seq - base) + len(fin.payload)
        if fin_at > pos:
            s.gaps.append((pos, fin_at - pos))
    return s


def _uncovered(covered, start, end):
    missing = end - start
    for a, b in covered:
        missing -= max(0, min(b, end) - max(a, start))
    return missing


def _cover(covered, start, end):
    covered.append((start, end))
    covered.sort()
    merged = [covered[0]]
    for a, b in covered[1:]:
        if a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    covered[:] = merged


# -- flows ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Message:
    direction: str  # C2S or S2C
    ts_ns: int
    data: bytes


@dataclasses.dataclass
class Flow:
    """A TCP connection, a UDP flow, or a Unix-socket conversation."""
    id: int
    kind: str  # tcp, udp, unix-stream, unix-dgram, unix-seqpacket
    client: str  # "10.0.0.1:4242", "pid 12"
    server: str  # "10.0.0.2:80", "/run/x.sock (pid 7)"
    first_ns: int
    last_ns: int
    meta: dict  # pid, comm, cgroup, container of the captured end
    packets: dict  # {C2S: n, S2C: n}
    bytes: dict  # payload bytes {C2S: n, S2C: n}, as the packets/records say (retransmissions included)
    messages: list  # Message turns, in time order
    streams: dict = None  # {C2S: Stream, S2C: Stream} for stream kinds
    client_addr: tuple = None  # (ip, port) for tcp/udp
    server_addr: tuple = None
    path: bytes = b""  # unix: the socket's name
    perspective: str = ""  # unix: which end the records come from: "server" or "client"
    duplicate: bool = False  # unix: the other end's records of a conversation also captured
    tls: str = ""  # "plaintext": written by capture --tls; "ciphertext": a connection whose plaintext is too
    twin: int = 0  # the id of the other of a plaintext/ciphertext pair

    @property
    def duration(self):
        return (self.last_ns - self.first_ns) / 1e9

    @property
    def total_bytes(self):
        return self.bytes[C2S] + self.bytes[S2C]

    @property
    def total_packets(self):
        return self.packets[C2S] + self.packets[S2C]

    def problems(self):
        """Human words for what reassembly found, empty when the streams are whole."""
        out = []
        for direction, s in (self.streams or {}).items():
            if s.gaps:
                out.append(f"{direction}: {len(s.gaps)} gap(s), {sum(n for _, n in s.gaps)} bytes missing")
            if s.retransmitted_bytes:
                out.append(f"{direction}: {s.retransmitted_packets} retransmission(s), "
                           f"{s.retransmitted_bytes} bytes seen twice")
            if s.out_of_order:
                out.append(f"{direction}: {s.out_of_order} segment(s) out of order")
        return out


@dataclasses.dataclass
class Capture:
    """Everything read from one file."""
    flows: list
    packets: int  # records read
    ignored: int  # records that are no TCP/UDP/UDS (ARP, ICMP, fragments, unknown link types)
    truncated: int  # bytes of a torn tail
    drops: int  # what the capturer's statistics blocks say it dropped (last value per interface)


def _meta(packet):
    meta = {}
    for comment in packet.comments:
        meta.update(pcapng.parse_comment(comment))
    return {k: meta[k] for k in ("pid", "comm", "cgroup", "container", "tls") if k in meta and meta[k] != "unknown"}


def _endpoint(addr, port):
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def read(path):
    """A Capture of the pcapng file at `path`; raises pcapng.PcapngError for what is no pcapng."""
    reader = pcapng.Reader(path)
    net = {}  # canonical 5-tuple -> list of [client (addr, port), [Segment...]] connections
    order = []  # (first index, kind, key) to number flows by first appearance
    uds = {}
    packets = ignored = 0
    drops = {}
    records = []
    for index, record in enumerate(reader):
        if isinstance(record, pcapng.Statistics):
            if record.dropped is not None:
                drops[record.interface.id] = record.dropped
            continue
        records.append((record.ts_ns, index, record))
    # A capturer with per-CPU buffers writes records a little out of time order: put them back,
    # or a connection's first packets, written late, would start a second flow.
    for index, (_ts, _i, record) in enumerate(sorted(records, key=lambda r: r[:2])):
        packets += 1
        meta = _meta(record)
        linktype = record.interface.linktype
        if linktype == pcapng.LINKTYPE_USER0:
            try:
                rec = pcapng.decode_uds(record.data)
            except pcapng.PcapngError:
                ignored += 1
                continue
            size = record.orig_len - (pcapng.UdsHeader.sizeof() + len(rec.path) + len(rec.peer_path))
            _add_uds(uds, order, index, record.ts_ns, rec, meta, max(size, len(rec.payload)))
            continue
        seg = parse_packet(linktype, record.data, index, record.ts_ns, meta)
        if seg is None:
            ignored += 1
            continue
        _add_net(net, order, seg)
    _settle_clients(net)
    flows = []
    for number, (_first, kind, key) in enumerate(sorted(order, key=lambda o: o[0]), 1):
        flows.append(_net_flow(number, *key) if kind == "net" else _uds_flow(number, key, uds[key]))
    _mark_duplicates(flows)
    _pair_tls(flows)
    return Capture(flows, packets, ignored, reader.truncated, sum(drops.values()))


def _add_net(net, order, seg):
    a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
    key = (seg.proto,) + (min(a, b, key=_sort_key), max(a, b, key=_sort_key), seg.meta.get("tls") == "plaintext")
    conns = net.setdefault(key, [])
    is_syn = seg.proto == IPPROTO_TCP and seg.flags & (SYN | ACK) == SYN
    if conns and is_syn:
        last = conns[-1]
        old_syn = next((g for g in last[1] if g.flags & (SYN | ACK) == SYN), None)
        if old_syn is not None and old_syn.seq != seg.seq or any(g.flags & (FIN | RST) for g in last[1]):
            conns.append(None)  # the same 5-tuple again: a new connection
    if not conns or conns[-1] is None:
        if conns:
            conns.pop()
        if seg.proto == IPPROTO_TCP and seg.flags & (SYN | ACK) == SYN | ACK:
            client = (seg.dst, seg.dport)  # the SYN-ACK goes to the client
        else:
            client = (seg.src, seg.sport)
        conns.append([client, []])
        order.append((seg.index, "net", (key, len(conns) - 1, conns[-1])))
    conns[-1][1].append(seg)


def _settle_clients(net):
    """A TCP connection caught without its handshake takes its first sender as the client; where
    that sender is an endpoint other connections in the file were opened to (a server), the other
    side is the client."""
    servers = {(g.dst, g.dport) for conns in net.values() for _client, segments in conns
               for g in segments if g.proto == IPPROTO_TCP and g.flags & (SYN | ACK) == SYN}
    for key, conns in net.items():
        for conn in conns:
            client, segments = conn
            if key[0] != IPPROTO_TCP or any(g.flags & SYN for g in segments):
                continue
            other = key[2] if key[1] == client else key[1]
            if client in servers and other not in servers:
                conn[0] = other


def _sort_key(endpoint):
    addr, port = endpoint
    return addr.version, int(addr), port


def _net_flow(number, key, _n, conn):
    client, segments = conn
    proto = key[0]
    server = next(e for e in key[1:3] if e != client) if key[1] != key[2] else client
    c2s = [g for g in segments if (g.src, g.sport) == client]
    s2c = [g for g in segments if (g.src, g.sport) != client]
    meta = next((g.meta for g in segments if "pid" in g.meta), segments[0].meta)
    flow = Flow(number, "tcp" if proto == IPPROTO_TCP else "udp", _endpoint(*client), _endpoint(*server),
                segments[0].ts_ns, segments[-1].ts_ns, meta,
                {C2S: len(c2s), S2C: len(s2c)},
                {C2S: sum(len(g.payload) for g in c2s), S2C: sum(len(g.payload) for g in s2c)},
                [], client_addr=client, server_addr=server, tls="plaintext" if key[3] else "")
    if proto == IPPROTO_TCP:
        flow.streams = {C2S: reassemble(c2s), S2C: reassemble(s2c)}
        flow.messages = _turns(flow.streams)
    else:
        flow.messages = [Message(C2S if (g.src, g.sport) == client else S2C, g.ts_ns, g.payload)
                         for g in segments if g.payload]
    return flow


def _turns(streams):
    """Merge both directions' chunks by time into turns (each direction stays in stream order)."""
    pieces = sorted(((c.ts_ns, i, d, c.data) for d in (C2S, S2C) for i, c in enumerate(streams[d].chunks)),
                    key=lambda p: (p[0], p[2] != C2S, p[1]))
    turns = []
    for ts, _i, direction, data in pieces:
        if turns and turns[-1].direction == direction:
            turns[-1].data += data
        else:
            turns.append(Message(direction, ts, data))
    return turns


def _pair_tls(flows):
    """A TCP flow on the endpoints of a TLS plaintext flow carries its ciphertext: mark the pair."""
    plain = {frozenset((f.client_addr, f.server_addr)): f for f in flows if f.tls == "plaintext"}
    for f in flows:
        twin = plain.get(frozenset((f.client_addr, f.server_addr))) if f.kind == "tcp" and not f.tls else None
        if twin is not None and not twin.twin:
            f.tls, f.twin, twin.twin = "ciphertext", twin.id, f.id


# -- unix sockets --------------------------------------------------------------------------------

def _add_uds(uds, order, index, ts_ns, rec, meta, size):
    """A record from the server's end (it owns the named path) or from the client's."""
    server_end = bool(rec.path)
    name = rec.path or rec.peer_path
    if server_end:
        server_pid, client_pid = rec.pid, rec.peer_pid
        direction = C2S if rec.direction == 1 else S2C
    else:
        server_pid, client_pid = rec.peer_pid, rec.pid
        direction = C2S if rec.direction == 0 else S2C
    key = (rec.sock_type, name, server_pid, client_pid, "server" if server_end else "client", rec.fd)
    if key not in uds:
        uds[key] = []
        order.append((index, "uds", key))
    uds[key].append((ts_ns, direction, rec.payload, size, meta))


def _uds_flow(number, key, records):
    sock_type, name, server_pid, client_pid, perspective, _fd = key
    kind = "unix-" + pcapng.SOCK_TYPES.get(sock_type, str(sock_type))
    meta = next((m for *_, m in records if "pid" in m), records[0][4])
    packets, sizes = {C2S: 0, S2C: 0}, {C2S: 0, S2C: 0}
    for _ts, direction, _payload, size, _m in records:
        packets[direction] += 1
        sizes[direction] += size
    messages = [Message(direction, ts, payload) for ts, direction, payload, _s, _m in records if payload]
    who = f"pid {client_pid}" if client_pid else "pid unknown"
    server = f"{pcapng.show_path(name)} (pid {server_pid or 'unknown'})"
    flow = Flow(number, kind, who, server, records[0][0], records[-1][0], meta, packets, sizes, messages,
                path=name, perspective=perspective)
    if kind != "unix-dgram":
        flow.streams = {d: _stream_of(m for m in messages if m.direction == d) for d in (C2S, S2C)}
        flow.messages = _turns(flow.streams)  # a stream has no message boundaries
    return flow


def _stream_of(messages):
    s = Stream()
    for m in messages:
        s.chunks.append(Chunk(s.length, m.ts_ns, m.data))
        s.packets += 1
        s.bytes += len(m.data)
    return s


def _mark_duplicates(flows):
    """When both ends of a Unix-socket conversation were captured, the client end's copy is a duplicate."""
    servers = {(f.kind, f.path, f.server.rsplit("(pid ", 1)[1], f.client) for f in flows if f.perspective == "server"}
    for f in flows:
        if f.perspective == "client" and (f.kind, f.path, f.server.rsplit("(pid ", 1)[1], f.client) in servers:
            f.duplicate = True
