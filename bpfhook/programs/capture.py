"""cgroup_skb packet capture: every TCP/UDP packet a cgroup's sockets receive (or send),
written to a BPF ring buffer as the pcapng Enhanced Packet Block itself.

The program runs at BPF_CGROUP_INET_INGRESS (after the socket lookup: only
packets delivered to a socket of the cgroup) or BPF_CGROUP_INET_EGRESS. The
skb data starts at the IP header, so packets are L3 (pcapng LINKTYPE_RAW).

A record is a whole EPB (header, packet, padding, epb_flags, trailing length),
its length a multiple of 8 so that records sit back to back in the ring with
only the ring's 8-byte headers between them: user space writes a run of them
with one writev of views over the ring, touching no packet. The first packet
of a flow (socket cookie and 5-tuple, in an LRU map) comes as a FLOW record:
a FlowHead (cgroup id, flow key) before its EPB, so that user space finds the
flow's owner once and writes that packet with the comment. per_packet makes
every record a FLOW record (--pid, --tls, per-packet comments).

The EPB is laid out in a scratch map value (an array slot per CPU and nesting
level: a softirq may run the egress program on a CPU whose process context is
inside it) and sent with bpf_ringbuf_output, whose length may vary.

Counters (a per-CPU array, indexes in STAT) make drops visible: a record the
ring had no room for, a packet cut at snaplen, a run with every slot of its
CPU busy.
"""
import construct

from pybpf.asm import Program
from pybpf.maps import Map, possible_cpus
from pybpf.uapi import MapType

FlowKey = construct.Struct(
    "cookie" / construct.Int64ul,
    "ports" / construct.Int32ul,  # source and destination, as in the packet
    "proto" / construct.Int32ul,  # IP version << 8 | protocol
    "addrs" / construct.Bytes(32),  # source then destination; IPv4's 8 bytes, then zeros
)
assert FlowKey.sizeof() == 48
# The record's prefix on the first packet of a flow; its EPB follows.
FlowHead = construct.Struct(
    "kind" / construct.Int32ul,  # FLOW: never an EPB's block type
    construct.Padding(4),
    "cgroup_id" / construct.Int64ul,  # cgroup of the socket (nested cgroups of the container too)
    "flow" / FlowKey,  # the flow's key in the flows map
)
assert FlowHead.sizeof() == 64
Config = construct.Struct("clock_offset_ns" / construct.Int64ul)  # CLOCK_REALTIME - CLOCK_MONOTONIC
FLOW = 0x464C4F57  # "WOLF": a local value, distinct from EPB (6) in its first byte
EPB, EPB_HEAD = 6, 28  # block type; bytes before the packet (type, length, interface, ts, caplen, len)
EPB_TAIL = 12  # after the padded packet: epb_flags (8 bytes), trailing length (4)
OPT_EPB_FLAGS = 2 | 4 << 16  # option code 2, length 4, as one little-endian word
INGRESS, EGRESS = 0, 1
DIRECTION = {"ingress": INGRESS, "egress": EGRESS}
EPB_DIRECTION = {INGRESS: 1, EGRESS: 2}  # epb_flags bits 0-1: inbound, outbound
STAT = {"seen": 0, "bytes": 1, "lost": 2, "truncated": 3, "busy": 4}
IPPROTO = {"tcp": 6, "udp": 17}
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
SKB_LEN, SKB_PROTOCOL = 0, 16  # struct __sk_buff offsets (uapi, stable)
SLOTS = 3  # scratch values per CPU: nesting levels (process context, softirq, one more)
FLOWS_MAX = 16384  # flows remembered; one forgotten is announced again (its packet commented again)
BPF_RB_NO_WAKEUP, BPF_RB_FORCE_WAKEUP, BPF_RB_AVAIL_DATA = 1, 2, 0
WAKEUP_BYTES = 1 << 20  # the reader is woken once this much waits (else by its poll timeout)


def record_size(caplen):
    """Bytes of the EPB of a packet of `caplen` captured bytes (a multiple of 8)."""
    return EPB_HEAD + (caplen + 7 & ~7) + EPB_TAIL


def scratch_size(snaplen):
    """A FlowHead and the largest EPB, with 8 bytes of slack: the verifier bounds the rounded
    length by snaplen + 7."""
    return FlowHead.sizeof() + record_size(snaplen) + 8


class Maps:
    """The maps the ingress and egress programs share, and close together."""

    def __init__(self, snaplen, ring_bytes):
        cpus = possible_cpus()
        self.events = Map(MapType.RINGBUF, max_entries=ring_bytes, name="cap_events")
        self.stats = Map(MapType.PERCPU_ARRAY, key=4, value=8, max_entries=len(STAT), name="cap_stats")
        self.busy = Map(MapType.ARRAY, key=4, value=8, max_entries=cpus, name="cap_busy")
        self.scratch = Map(MapType.ARRAY, key=4, value=scratch_size(snaplen), max_entries=cpus * SLOTS,
                           name="cap_scratch", btf=False)
        self.flows = Map(MapType.LRU_HASH, key=FlowKey, value=8, max_entries=FLOWS_MAX, name="cap_flows")
        self.config = Map(MapType.ARRAY, key=4, value=Config, max_entries=1, name="cap_config")

    def all(self):
        return (self.events, self.stats, self.busy, self.scratch, self.flows, self.config)

    def close(self):
        for m in self.all():
            m.close()


def count_stat(p, stats, key, index, amount=1):
    """stats[index] += amount in a per-CPU array (no atomics needed); key: 4 spare stack bytes.
    Clobbers r0-r5."""
    key.u32[0] = index
    p.call("map_lookup_elem", stats, key)
    with p.If(p.r0 != 0):
        p.r1 = p.r0.u64[0]
        p.r1 += amount
        p.r0.u64[0] = p.r1


def build(direction, maps, snaplen=262144, ip_proto=0, port=0, interface=0, per_packet=False):
    """The cgroup_skb program for `direction` ("ingress"/"egress").

    ip_proto: 0 = TCP and UDP, else only that protocol; port: 0 = any, else
    packets whose source or destination port is `port`. Both are baked in as
    immediates: the program is built per capture. interface: the EPBs' pcapng
    interface id."""
    p = Program(f"cap_{direction}", prog_type="cgroup_skb")
    p.r6 = p.r1  # skb
    key = p.stack.alloc(4)
    flow = p.stack.alloc(FlowKey)
    saved = p.stack.alloc(8 * 3)  # busy word pointer, slot bit, new flow

    # r7 = L4 offset, r8 = IP version << 8 | protocol; anything not TCP/UDP over IPv4/IPv6
    # passes unrecorded. The flow key gets the addresses on the way.
    flow.zero()
    p.r1 = p.r6.u32[SKB_PROTOCOL]
    with p.If(p.r1 == _be16(ETH_P_IP)):
        p.call("skb_load_bytes", p.r6, 0, flow.addr("addrs"), 1)
        with p.If(p.r0 != 0):
            p.exit(1)
        p.r7 = flow.addrs.u8[0]
        p.r7 &= 0x0F
        p.r7 <<= 2
        p.call("skb_load_bytes", p.r6, 9, flow.addr("addrs"), 1)
        with p.If(p.r0 != 0):
            p.exit(1)
        p.r8 = flow.addrs.u8[0]
        p.r8 |= 4 << 8
        p.call("skb_load_bytes", p.r6, 12, flow.addr("addrs"), 8)
        with p.If(p.r0 != 0):
            p.exit(1)
    with p.Elif(p.r1 == _be16(ETH_P_IPV6)):
        p.call("skb_load_bytes", p.r6, 6, flow.addr("addrs"), 1)  # next header; extension headers are not walked
        with p.If(p.r0 != 0):
            p.exit(1)
        p.r8 = flow.addrs.u8[0]
        p.r8 |= 6 << 8
        p.r7 = 40
        p.call("skb_load_bytes", p.r6, 8, flow.addr("addrs"), 32)
        with p.If(p.r0 != 0):
            p.exit(1)
    with p.Else():
        p.exit(1)
    p.r1 = p.r8
    p.r1 &= 0xFF
    if ip_proto:
        with p.If(p.r1 != ip_proto):
            p.exit(1)
    else:
        with p.If(p.r1 != IPPROTO["tcp"]):
            with p.If(p.r1 != IPPROTO["udp"]):
                p.exit(1)
    flow.proto = p.r8
    p.call("skb_load_bytes", p.r6, p.r7, flow.addr("ports"), 4)
    with p.If(p.r0 != 0):
        p.exit(1)
    if port:
        p.r1 = flow.ports
        p.r2 = p.r1
        p.r1 &= 0xFFFF
        p.r2 >>= 16
        with p.If(p.r1 != _be16(port)):
            with p.If(p.r2 != _be16(port)):
                p.exit(1)

    p.r9 = p.r6.u32[SKB_LEN]
    with p.If(p.r9 < 20):
        p.exit(1)
    count_stat(p, maps.stats, key, STAT["seen"], 1)
    count_stat(p, maps.stats, key, STAT["bytes"], p.r9)
    p.call("get_socket_cookie", p.r6)
    flow.cookie = p.r0

    # A flow's first packet (or every packet, per_packet) goes with its FlowHead.
    if per_packet:
        saved.u64[16] = 1
    else:
        saved.u64[16] = 0
        p.call("map_update_elem", maps.flows, flow, flow.addr("cookie"), 1)  # BPF_NOEXIST: 0 only for a new flow
        with p.If(p.r0 == 0):
            saved.u64[16] = 1

    # A scratch slot: the first free bit of this CPU's busy word (a run may interrupt another).
    p.call("get_smp_processor_id")
    p.r7 = p.r0  # cpu
    key.u32[0] = p.r0
    p.call("map_lookup_elem", maps.busy, key)
    with p.If(p.r0 == 0):
        p.exit(1)
    saved.u64[0] = p.r0
    p.r8 = 0  # slot
    p.r1 = 1
    p.atomic_or(p.r0.u64[0], p.r1, fetch=True)
    with p.If(p.r1 & 1):
        p.r8 = 1
        p.r1 = 2
        p.atomic_or(p.r0.u64[0], p.r1, fetch=True)
        with p.If(p.r1 & 2):
            p.r8 = 2
            p.r1 = 4
            p.atomic_or(p.r0.u64[0], p.r1, fetch=True)
            with p.If(p.r1 & 4):
                count_stat(p, maps.stats, key, STAT["busy"], 1)
                p.exit(1)
    p.r1 = 1
    p.r1 <<= p.r8
    saved.u64[8] = p.r1
    p.r7 *= SLOTS
    p.r7 += p.r8
    key.u32[0] = p.r7
    p.call("map_lookup_elem", maps.scratch, key)
    with p.If(p.r0 == 0):
        _release(p, saved)
        p.exit(1)
    p.r7 = p.r0  # the scratch value: FlowHead, then the EPB

    # r8 = caplen = min(len, snaplen), in 20..snaplen for the verifier
    p.r8 = p.r9
    with p.If(p.r9 > snaplen):
        p.r8 = snaplen
        count_stat(p, maps.stats, key, STAT["truncated"], 1)
    head = FlowHead.sizeof()
    p.r1 = saved.u64[16]
    with p.If(p.r1 != 0):
        p.r1 = FLOW
        p.r7.u32[0] = p.r1
        p.call("skb_cgroup_id", p.r6)
        p.r7.u64[8] = p.r0
        for off in range(0, FlowKey.sizeof(), 8):
            p.r1 = flow.u64[off]
            p.r7.u64[16 + off] = p.r1
    p.r1 = EPB
    p.r7.u32[head] = p.r1
    p.r1 = interface
    p.r7.u32[head + 8] = p.r1
    p.call("ktime_get_ns")
    p.ld_map_value(p.r1, maps.config)
    p.r1 = p.r1.u64[0]
    p.r0 += p.r1
    p.r7.u32[head + 16] = p.r0  # ts_low
    p.r0 >>= 32
    p.r7.u32[head + 12] = p.r0  # ts_high
    p.r7.u32[head + 20] = p.r8
    p.r7.u32[head + 24] = p.r9

    # The word the padding ends in, zeroed before the packet fills the rest of it.
    p.r1 = p.r8
    p.r1 += 3
    p.r1 &= ~3
    p.r1 += p.r7
    p.r1.u32[head + EPB_HEAD - 4] = 0
    p.r4 = p.r7
    p.r4 += head + EPB_HEAD
    p.call("skb_load_bytes", p.r6, 0, p.r4, p.r8)
    with p.If(p.r0 != 0):
        _release(p, saved)
        p.exit(1)
    # epb_flags after the padded packet, then an opt_endofopt word that the 8-byte rounding
    # keeps or the trailing length writes over.
    p.r1 = p.r8
    p.r1 += 3
    p.r1 &= ~3
    p.r1 += p.r7
    p.r2 = OPT_EPB_FLAGS
    p.r1.u32[head + EPB_HEAD] = p.r2
    p.r2 = EPB_DIRECTION[DIRECTION[direction]]
    p.r1.u32[head + EPB_HEAD + 4] = p.r2
    p.r1.u32[head + EPB_HEAD + 8] = 0
    p.r9 = p.r8  # r9 = the EPB's length
    p.r9 += 7
    p.r9 &= ~7
    p.r9 += EPB_HEAD + EPB_TAIL
    p.r1 = p.r7
    p.r1 += p.r9
    p.r1.u32[head - 4] = p.r9
    p.r7.u32[head + 4] = p.r9

    p.call("ringbuf_query", maps.events, BPF_RB_AVAIL_DATA)
    p.r4 = BPF_RB_NO_WAKEUP
    with p.If(p.r0 >= WAKEUP_BYTES):
        p.r4 = BPF_RB_FORCE_WAKEUP
    p.r1 = saved.u64[16]
    with p.If(p.r1 != 0):
        p.r9 += head
        p.call("ringbuf_output", maps.events, p.r7, p.r9, p.r4)
    with p.Else():
        p.r7 += head
        p.call("ringbuf_output", maps.events, p.r7, p.r9, p.r4)
    with p.If(p.r0 != 0):
        count_stat(p, maps.stats, key, STAT["lost"], 1)
        if not per_packet:  # announce the flow again with its next packet
            p.r1 = saved.u64[16]
            with p.If(p.r1 != 0):
                p.call("map_delete_elem", maps.flows, flow)
    _release(p, saved)
    p.exit(1)
    return p


def _release(p, saved):
    """Give the scratch slot back: clear its bit in the CPU's busy word."""
    p.r1 = saved.u64[8]
    p.r1 ^= -1
    p.r2 = saved.u64[0]
    p.atomic_and(p.r2.u64[0], p.r1)


def _be16(value):
    """A big-endian u16 as a little-endian load of it reads (skb->protocol, ports)."""
    return ((value & 0xFF) << 8) | (value >> 8)
