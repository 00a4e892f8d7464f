"""cgroup_skb packet capture: every TCP/UDP packet a cgroup's sockets receive (or send).

The program runs at BPF_CGROUP_INET_INGRESS (after the socket lookup: only
packets delivered to a socket of the cgroup) or BPF_CGROUP_INET_EGRESS. The
skb data starts at the IP header, so records are L3 packets (pcapng
LINKTYPE_RAW). Each record is a PacketEvent followed by the first `caplen`
bytes of the packet, appended by bpf_perf_event_output itself (the
BPF_F_CTXLEN_MASK bits of flags): no bounded copy loop, no size limit but
the snaplen.

Counters (a per-CPU array, indexes in STAT) make drops visible: a record the
perf ring had no room for, a packet cut at snaplen.
"""
import construct

from pybpf.asm import Program
from pybpf.maps import Map
from pybpf.uapi import MapType

PacketEvent = construct.Struct(
    "ts_ns" / construct.Int64ul,  # bpf_ktime_get_ns (CLOCK_MONOTONIC)
    "cookie" / construct.Int64ul,  # socket cookie: joins packets of one socket
    "cgroup_id" / construct.Int64ul,  # cgroup of the socket (nested cgroups of the container too)
    "len" / construct.Int32ul,  # packet length on the wire at L3
    "caplen" / construct.Int32ul,  # bytes that follow this header
    "direction" / construct.Int8ul,  # DIRECTION
    "ip_proto" / construct.Int8ul,
    construct.Padding(6),
)
assert PacketEvent.sizeof() == 40

INGRESS, EGRESS = 0, 1
DIRECTION = {"ingress": INGRESS, "egress": EGRESS}
STAT = {"seen": 0, "bytes": 1, "lost": 2, "truncated": 3}
IPPROTO = {"tcp": 6, "udp": 17}
BPF_F_CURRENT_CPU = 0xFFFFFFFF
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
SKB_LEN, SKB_PROTOCOL = 0, 16  # struct __sk_buff offsets (uapi, stable)


def maps(cpus_pages=None):
    """(events, stats) maps shared by the ingress and egress programs."""
    events = Map(MapType.PERF_EVENT_ARRAY, name="cap_events")
    stats = Map(MapType.PERCPU_ARRAY, key=4, value=8, max_entries=len(STAT), name="cap_stats")
    return events, stats


def count_stat(p, stats, key, index, amount=1):
    """stats[index] += amount in a per-CPU array (no atomics needed); key: 4 spare stack bytes.
    Clobbers r0-r5."""
    key.u32[0] = index
    p.call("map_lookup_elem", stats, key)
    with p.If(p.r0 != 0):
        p.r1 = p.r0.u64[0]
        p.r1 += amount
        p.r0.u64[0] = p.r1


def build(direction, events, stats, snaplen=262144, ip_proto=0, port=0):
    """The cgroup_skb program for `direction` ("ingress"/"egress").

    ip_proto: 0 = TCP and UDP, else only that protocol; port: 0 = any, else
    packets whose source or destination port is `port`. Both are baked in as
    immediates: the program is built per capture."""
    p = Program(f"cap_{direction}", prog_type="cgroup_skb")
    p.r6 = p.r1  # skb
    buf = p.stack.alloc(8)
    key = p.stack.alloc(4)
    ev = p.stack.alloc(PacketEvent)

    # r7 = L4 offset, r8 = IP protocol; anything not TCP/UDP over IPv4/IPv6 passes unrecorded.
    p.r1 = p.r6.u32[SKB_PROTOCOL]
    with p.If(p.r1 == _be16(ETH_P_IP)):
        p.call("skb_load_bytes", p.r6, 0, buf, 1)
        with p.If(p.r0 != 0):
            p.exit(1)
        p.r7 = buf.u8[0]
        p.r7 &= 0x0F
        p.r7 <<= 2
        p.call("skb_load_bytes", p.r6, 9, buf, 1)
        with p.If(p.r0 != 0):
            p.exit(1)
        p.r8 = buf.u8[0]
    with p.Elif(p.r1 == _be16(ETH_P_IPV6)):
        p.call("skb_load_bytes", p.r6, 6, buf, 1)  # next header; extension headers are not walked
        with p.If(p.r0 != 0):
            p.exit(1)
        p.r8 = buf.u8[0]
        p.r7 = 40
    with p.Else():
        p.exit(1)
    if ip_proto:
        with p.If(p.r8 != ip_proto):
            p.exit(1)
    else:
        with p.If(p.r8 != IPPROTO["tcp"]):
            with p.If(p.r8 != IPPROTO["udp"]):
                p.exit(1)
    if port:
        p.call("skb_load_bytes", p.r6, p.r7, buf, 4)
        with p.If(p.r0 != 0):
            p.exit(1)
        p.r1 = buf.u16[0]
        p.r2 = buf.u16[2]
        with p.If(p.r1 != _be16(port)):
            with p.If(p.r2 != _be16(port)):
                p.exit(1)

    ev.zero()
    ev.direction = DIRECTION[direction]
    p.r1 = p.r8
    ev.ip_proto = p.r1
    p.call("ktime_get_ns")
    ev.ts_ns = p.r0
    p.call("get_socket_cookie", p.r6)
    ev.cookie = p.r0
    p.call("skb_cgroup_id", p.r6)
    ev.cgroup_id = p.r0
    p.r9 = p.r6.u32[SKB_LEN]
    ev.len = p.r9
    count_stat(p, stats, key, STAT["seen"], 1)
    count_stat(p, stats, key, STAT["bytes"], p.r9)

    # r7 = caplen = min(len, snaplen)
    p.r7 = p.r9
    with p.If(p.r9 > snaplen):
        p.r7 = snaplen
        count_stat(p, stats, key, STAT["truncated"], 1)
    ev.caplen = p.r7
    p.r3 = p.r7
    p.r3 <<= 32
    p.r1 = BPF_F_CURRENT_CPU
    p.r3 |= p.r1
    p.call("perf_event_output", p.r6, events, p.r3, ev, PacketEvent.sizeof())
    with p.If(p.r0 != 0):
        count_stat(p, stats, key, STAT["lost"], 1)
    p.exit(1)
    return p


def _be16(value):
    """A big-endian u16 as a little-endian load of it reads (skb->protocol, ports)."""
    return ((value & 0xFF) << 8) | (value >> 8)
