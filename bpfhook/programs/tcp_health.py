"""Retransmits and resets of the connections the monitor follows: the tracepoints
tcp:tcp_retransmit_skb, tcp:tcp_send_reset and tcp:tcp_receive_reset (each takes the socket
first), one small program per tracepoint, attached as raw tracepoints (no kprobes).

Each counts in its connection's CONN (what its close event carries) and at once in its
cgroup's and namespace's metrics: a live connection's retransmits show before it closes.
Retransmits are of segments after the handshake, as coroot counts them: a SYN's (or a
SYN-ACK's) is a connect's retry, which shows in its connect time or its failure (timeout).
An abort's reset, sent just after its socket closed (tcp_disconnect), counts in the metrics
here; conn_state put it in the close event already (_abort_reset). A reset sent with no
socket we follow (the answer to a SYN for a closed port, sent by no socket) counts in
stats[STAT_RESETS_UNOWNED]. These run rarely (a loss, an abort): they use the metrics hash
maps and atomic adds, not the per-CPU caches conn_state fills with preemption off.
"""
from bpfhook import records
from pybpf.asm import Program

from .conn_common import CONN_IN_SLOT, account, conn_at, define_metrics, find_conn, stat_add

CLOSE, SYN_SENT, SYN_RECV = (records.TCP_STATE_IDS[s] for s in ("CLOSE", "SYN_SENT", "SYN_RECV"))
ARG_SK = 0  # (const struct sock *sk, ...) in each

# tracepoint -> the METRICS field it counts in, and its program's name (the kernel keeps 15 characters)
TRACEPOINTS = {"tcp_retransmit_skb": ("retransmits", "bh_retrans"), "tcp_send_reset": ("resets_sent", "bh_rst_sent"),
               "tcp_receive_reset": ("resets_received", "bh_rst_recv")}


def build(maps, tracepoint):
    """The raw tracepoint program of `tracepoint` (one of TRACEPOINTS)."""
    field, name = TRACEPOINTS[tracepoint]
    p = Program(name, prog_type="raw_tracepoint")
    key = p.stack.alloc(8)
    scratch = p.stack.alloc(8)
    slot = p.stack.alloc(8)

    p.r6 = p.r1.u64[ARG_SK]
    slot.u64[0] = 0
    find_conn(p, maps, p.r6, key, scratch, "scalar", slot)
    if field == "resets_sent":
        _ended_in_slot(p, maps, slot)
    p.r1 = 0
    with p.If(p.r7 != 0):
        p.r1 = conn_at(p, p.r7).state
    with p.If(p.r1 == 0):  # no entry
        if field == "resets_sent":
            stat_add(p, maps, scratch, records.STAT_RESETS_UNOWNED, 1)
        p.exit(0)
    if field == "retransmits":  # a SYN's: a connect's retry, seen in its connect time or failure
        p.r2 = p.r1
        p.r2 -= SYN_SENT
        with p.If(p.r2 <= SYN_RECV - SYN_SENT):
            p.exit(0)
    conn = conn_at(p, p.r7)
    if field != "resets_sent":
        with p.If(p.r1 == CLOSE):  # an ended connection's entry, kept for the next socket here
            p.exit(0)
        _count_in_conn(p, conn, field)
    else:  # an abort's reset comes after its close (conn_state counted it in the close event)
        with p.If(p.r1 != CLOSE):
            _count_in_conn(p, conn, field)
    account(p, (conn.cgroup_id, conn.netns), [(field, 1)])
    p.exit(0)
    define_metrics(p, maps)
    return p


def _count_in_conn(p, conn, field):
    """conn.field += 1 (its close event's count): atomic for the u32 retransmits; the u16 resets
    have no atomic add, and one socket's resets come one at a time (under its lock)."""
    if records.sizeof(records.CONN, field) == 4:
        p.r1 = 1
        conn[field] += p.r1
    else:
        p.r1 = conn[field]
        p.r1 += 1
        conn[field] = p.r1


def _ended_in_slot(p, maps, slot):
    """r7 = the CONN in the slot at `slot` when it holds the socket at r6 as ended, unless r7
    already is an entry: an abort (SO_LINGER 0, tcp_disconnect) closes the socket first and
    sends its reset after."""
    if not maps.slots:
        return
    with p.If(p.r7 == 0):
        p.r1 = slot.u64[0]
        with p.If(p.r1 != 0):
            p.r2 = p.r1.u64[0]
            p.r3 = p.r6
            p.r3 |= records.SLOT_ENDED
            with p.If(p.r2 == p.r3):
                p.r7 = p.r1
                p.r7 += CONN_IN_SLOT
