"""TCP connections open before the monitor started: a socket iterator (bpf_iter_tcp, Linux 5.9)
run once, after the state program is attached, enters each into the connection table.

Without it such a connection is seen only at its next transition, which for a
connection that is not opening follows nothing: it is missing from the live
table and the report's counts, and its close counts in lost["conns"].

For every full TCP socket (TIME_WAIT and request mini-sockets are skipped, and
so are listeners and closed sockets), unless the table has it already (it
opened since the state program was attached):

    addresses, state, cgroup and netns   from the socket, like an opening's
    start_ns                             now (the connection is older: F_OLDER)
    owner                                unknown (pid 0) until the task that closes it
                                         (conn_state), or that accepts it
    F_PASSIVE                            a socket no process holds yet (sk_socket NULL):
                                         a listener's child waiting in its accept queue,
                                         which accept() then hands over (programs/accept.py)

The kernel runs the program with the socket locked, so its own transitions
wait for us. When streaming, each is also sent as an event of kind "existing"
(newstate: its state), so that a report built from events lists it too. (On a
perf buffer too: bpf_perf_event_output from a tracing program takes its
registers from a per-CPU scratch area, never from the context.)
"""
from bpfhook import records
from bpfhook.records import CONN, EVENT
from pybpf.asm import Program

from .conn_common import (C, E, IPPROTO_TCP, claim_slot, copy_shared, emit, find_conn, sock_addresses,
                          sock_owner, store_conn, typed_field)

FUNC = "bpf_iter_tcp"  # the iterator target's function: the program's attach_btf_id
# struct bpf_iter__tcp { struct bpf_iter_meta *meta; struct sock_common *sk_common; uid_t uid; }
CTX_META, CTX_SK_COMMON = 0, 8
META_SEQ = 0  # struct bpf_iter_meta { struct seq_file *seq; ... }
SKIPPED_STATES = (records.TCP_STATE_IDS["LISTEN"], records.TCP_STATE_IDS["CLOSE"])


def build(maps, kernel):
    """The iterator program: load as tracing, expected_attach_type trace_iter, attach_btf_id
    kernel.func(FUNC)[0]; run with pybpf.attach.iterator and run_iterator."""
    p = Program("bh_existing", prog_type="tracing")
    ev = p.stack.alloc(EVENT)
    conn = p.stack.alloc(CONN)
    buf = p.stack.alloc(32)
    key = p.stack.alloc(8)
    scratch = p.stack.alloc(8)
    slot = p.stack.alloc(8)

    p.r9 = p.r1
    p.r1 = p.r9.u64[CTX_SK_COMMON]
    with p.If(p.r1 == 0):  # the end of the walk
        p.exit(0)
    p.call("skc_to_tcp_sock", p.r1)  # NULL for mini-sockets and other protocols
    with p.If(p.r0 == 0):
        p.exit(0)
    p.r6 = p.r0
    p.r8 = typed_field(p.r6, kernel, "sk_state")
    for state in SKIPPED_STATES:
        with p.If(p.r8 == state):
            p.exit(0)
    slot.u64[0] = 0
    find_conn(p, maps, p.r6, key, scratch, "pointer", slot)
    with p.If(p.r7 != 0):
        p.r1 = p.r7.u8[C["state"]]
        with p.If(p.r1 != records.TCP_STATE_IDS["CLOSE"]):  # followed already
            p.exit(0)

    ev.zero()
    sock_addresses(p, kernel, ev, buf, p.r6, E, typed=True)
    sock_owner(p, kernel, ev, scratch, p.r6, typed=True)
    ev.u8[E["protocol"]] = IPPROTO_TCP
    p.r1 = records.F_OLDER
    p.r2 = typed_field(p.r6, kernel, "sk_socket")
    with p.If(p.r2 == 0):
        p.r1 |= records.F_PASSIVE
    ev.u8[E["flags"]] = p.r1
    conn.zero()
    copy_shared(p, ev, EVENT, conn, CONN)
    conn.u8[C["state"]] = p.r8
    p.call("ktime_get_ns")
    conn.u64[C["start_ns"]] = p.r0
    ev.u64[E["ts_ns"]] = p.r0

    p.r4 = 0
    if maps.slots:
        claim_slot(p, slot, p.r6)
    store_conn(p, maps, p.r4, conn, key)  # (r4 0: its slot is another live connection's)
    if maps.stream:
        ev.u64[E["sock"]] = p.r6
        ev.u8[E["newstate"]] = p.r8
        ev.u8[E["kind"]] = records.EV_EXISTING
        emit(p, maps, ev, p.r9, scratch)
    p.r1 = p.r9.u64[CTX_META]
    p.r1 = p.r1.u64[META_SEQ]
    p.call("seq_write", p.r1, scratch, 1)  # one byte per connection entered: the count, for user space
    p.exit(0)
    return p
