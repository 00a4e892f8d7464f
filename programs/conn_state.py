"""TCP connection lifecycle from tracepoint sock:inet_sock_set_state (IPv4 and IPv6).

Every transition of a TCP socket becomes an EVENT (kind state, or close on
the move to TCP_CLOSE) keyed by the struct sock address, the tracepoint's
skaddr. The connection map follows each socket:

    CLOSE -> SYN_SENT   (connect(): process context) new entry, owner = current task
    CLOSE -> SYN_RECV   (handshake: softirq) new entry, owner unknown (pid 0) until accept()
    any   -> CLOSE      bytes from tcp_sock, duration, entry deleted

Bytes: tcp_sock.bytes_sent (payload sent, retransmissions included) and
bytes_received (payload received; it also counts the peer's FIN, removed here).

cgroup and netns come from the socket itself (sk_cgrp_data, sk_net's cookie),
never from the current task, which in softirq context is whoever was
interrupted. Record offsets come from the tracepoint's format file, kernel
struct offsets from BTF, both read when the program is built.
"""
from bpfhook import records
from bpfhook.records import CONN, EVENT, offsetof
from pybpf import tracefs
from pybpf.asm import Program

from .conn_common import (AF_INET, IPPROTO_TCP, C, E, account, count_lost, current_task, define_metrics, emit,
                          kread, remember, sock_owner, stat_add, stat_max)

TRACEPOINT = "sock:inet_sock_set_state"
FIELDS = ("skaddr", "oldstate", "newstate", "sport", "dport", "family", "protocol", "saddr", "daddr",
          "saddr_v6", "daddr_v6")

SYN_SENT, SYN_RECV, CLOSE, LISTEN = (records.TCP_STATE_IDS[s] for s in ("SYN_SENT", "SYN_RECV", "CLOSE", "LISTEN"))

# States a connection is only in after the peer's FIN arrived (FIN_WAIT2 ends in CLOSE through
# TIME_WAIT, i.e. on the peer's FIN, unless its timer expires: then one byte too few is reported).
FIN_SEEN_MASK = sum(1 << records.TCP_STATE_IDS[s] for s in ("CLOSE_WAIT", "LAST_ACK", "CLOSING", "TIME_WAIT",
                                                             "FIN_WAIT2"))

# Fields copied between EVENT (stack) and CONN (map value), with their access type.
_SHARED = [("cgroup_id", "u64"), ("netns", "u64"), ("pid", "u32"), ("tid", "u32"), ("sport", "u16"),
           ("dport", "u16"), ("family", "u16"), ("protocol", "u8"), ("flags", "u8")]
_ARRAYS = ("comm", "saddr", "daddr")  # 16 bytes each: two u64 moves


def build(maps, kernel, fields=None):
    """The tracepoint program. maps: conn_common.Maps; kernel: conn_common.KernelOffsets;
    fields: the tracepoint's format fields (read from tracefs when None)."""
    tp = fields or tracefs.tracepoint_fields(TRACEPOINT, require=FIELDS)
    at = {name: tp[name].offset for name in FIELDS}

    p = Program("bh_conn_state", prog_type="tracepoint")
    ev = p.stack.alloc(EVENT)
    conn = p.stack.alloc(CONN)
    key = p.stack.alloc(8)
    scratch = p.stack.alloc(8)

    p.r9 = p.r1  # ctx: the tracepoint record
    p.w1 = p.r9.u16[at["protocol"]]
    with p.If(p.r1 != IPPROTO_TCP):  # SCTP and MPTCP use the tracepoint too
        p.exit(0)
    p.r6 = p.r9.u64[at["skaddr"]]
    p.r8 = p.r9.u32[at["newstate"]]
    ev.zero()
    p.call("ktime_get_ns")
    ev.u64[E["ts_ns"]] = p.r0
    _fill_from_record(p, ev, at)
    ev.u8[E["kind"]] = records.EV_STATE

    key.u64[0] = p.r6
    p.call("map_lookup_elem", maps.conns, key)
    p.r7 = p.r0
    keys = (ev.u64[E["cgroup_id"]], ev.u64[E["netns"]])
    with p.If(p.r7 == 0):
        with p.If(p.r8 == SYN_SENT):  # connect(): we run in the connecting task
            current_task(p, ev, cgroup=False)
        sock_owner(p, kernel, ev, scratch, p.r6)
        p.r1 = p.r8
        p.r1 -= SYN_SENT
        with p.If(p.r1 <= SYN_RECV - SYN_SENT):  # an opening: start following it
            _new_conn(p, maps, ev, conn, key)
            account(p, keys, [("opened", 1), ("active", 1)])
        with p.Elif(p.r8 == CLOSE):
            p.r1 = ev.u8[E["oldstate"]]
            with p.If(p.r1 != LISTEN):  # a connection we never saw open (evicted, or older than us)
                count_lost(p, maps, scratch, records.LOST_CONNS)
    with p.Else():
        _owner_from_conn(p, ev)
        p.r7.u8[C["state"]] = p.r8
        _addresses_to_conn(p, ev)
        with p.If(p.r8 == CLOSE):
            ev.u8[E["kind"]] = records.EV_CLOSE
            p.r1 = ev.u64[E["ts_ns"]]
            p.r2 = p.r7.u64[C["start_ns"]]
            p.r1 -= p.r2
            ev.u64[E["duration_ns"]] = p.r1
            kread(p, ev, E["bytes_sent"], 8, p.r6, kernel.bytes_sent)
            kread(p, ev, E["bytes_received"], 8, p.r6, kernel.bytes_received)
            _drop_fin(p, ev)
            p.call("map_delete_elem", maps.conns, key)
            account(p, keys, [("closed", 1), ("active", -1),
                              ("bytes_sent", ev.u64[E["bytes_sent"]]),
                              ("bytes_received", ev.u64[E["bytes_received"]])])
            stat_add(p, maps, scratch, records.STAT_DURATION_TOTAL, ev.u64[E["duration_ns"]])
            stat_max(p, maps, scratch, records.STAT_DURATION_MAX, ev.u64[E["duration_ns"]])
            remember(p, maps, ev, scratch)
    account(p, keys, [], state=ev.u8[E["newstate"]])
    _count_transition(p, maps, ev, scratch)
    emit(p, maps, ev, p.r9, scratch)
    p.exit(0)
    define_metrics(p, maps)
    return p


def _count_transition(p, maps, ev, scratch):
    """stats[STAT_TRANSITIONS + old * 16 + new] += 1."""
    p.r6 = ev.u8[E["oldstate"]]
    p.r6 &= 15
    p.r6 <<= 4
    p.r1 = p.r8
    p.r1 &= 15
    p.r6 += p.r1
    p.r6 += records.STAT_TRANSITIONS
    stat_add(p, maps, scratch, p.r6, 1)


def _drop_fin(p, ev):
    """bytes_received counts the peer's FIN (one sequence number): take it out when the
    state before CLOSE says the FIN arrived."""
    p.r1 = ev.u8[E["oldstate"]]
    p.r2 = FIN_SEEN_MASK
    p.r2 >>= p.r1
    p.r2 &= 1
    p.r1 = ev.u64[E["bytes_received"]]
    with p.If(p.r1 >= p.r2):
        p.r1 -= p.r2
        ev.u64[E["bytes_received"]] = p.r1


def _fill_from_record(p, ev, at):
    """Addresses, ports, family and states from the tracepoint record (r9)."""
    p.r1 = p.r9.u16[at["family"]]
    ev.u16[E["family"]] = p.r1
    ev.u8[E["protocol"]] = IPPROTO_TCP
    ev.u64[E["sock"]] = p.r6
    p.r2 = p.r9.u16[at["sport"]]
    ev.u16[E["sport"]] = p.r2
    p.r2 = p.r9.u16[at["dport"]]
    ev.u16[E["dport"]] = p.r2
    p.r2 = p.r9.u32[at["oldstate"]]
    ev.u8[E["oldstate"]] = p.r2
    ev.u8[E["newstate"]] = p.r8
    with p.If(p.r1 == AF_INET):
        for name in ("saddr", "daddr"):
            p.r2 = p.r9.u32[at[name]]
            ev.u32[E[name]] = p.r2
    with p.Else():
        for name in ("saddr", "daddr"):
            for half in (0, 8):
                p.r2 = p.r9.u64[at[name + "_v6"] + half]
                ev.u64[E[name] + half] = p.r2


def _new_conn(p, maps, ev, conn, key):
    conn.zero()
    p.r1 = ev.u64[E["ts_ns"]]
    conn.u64[C["start_ns"]] = p.r1
    _copy(p, ev, EVENT, conn, CONN)
    conn.u8[C["state"]] = p.r8
    p.call("map_update_elem", maps.conns, key, conn, 0)


def _owner_from_conn(p, ev):
    """The connection's owner (set at connect / accept) into the event; r7 = CONN in the map."""
    for name, type in _SHARED:
        if name in ("sport", "dport", "family", "protocol"):
            continue  # the record's own values are current
        p.r1 = p.r7.mem(C[name], type)
        getattr(ev, type)[E[name]] = p.r1
    for half in (0, 8):
        p.r1 = p.r7.u64[C["comm"] + half]
        ev.u64[E["comm"] + half] = p.r1


def _addresses_to_conn(p, ev):
    """The record's addresses and ports into the CONN at r7: a connect() has no source port
    at SYN_SENT, the later transitions do."""
    for name, type in (("sport", "u16"), ("dport", "u16")):
        p.r1 = getattr(ev, type)[E[name]]
        getattr(p.r7, type)[C[name]] = p.r1
    for name in ("saddr", "daddr"):
        for half in (0, 8):
            p.r1 = ev.u64[E[name] + half]
            p.r7.u64[C[name] + half] = p.r1


def _copy(p, src, src_layout, dst, dst_layout):
    """Every shared field from one stack struct to another."""
    for name, type in _SHARED:
        p.r1 = getattr(src, type)[offsetof(src_layout, name)]
        getattr(dst, type)[offsetof(dst_layout, name)] = p.r1
    for name in _ARRAYS:
        for half in (0, 8):
            p.r1 = src.u64[offsetof(src_layout, name) + half]
            dst.u64[offsetof(dst_layout, name) + half] = p.r1
