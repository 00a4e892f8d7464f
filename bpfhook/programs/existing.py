"""TCP connections open before the monitor started: a socket iterator (bpf_iter_tcp, 5.9), run
once after the state program is attached, enters each into the connection table. (Otherwise
such a connection is seen only at its next transition: missing from the report until then,
its close counted lost.)

Every full TCP socket (no TIME_WAIT or request mini-socket, none closed) the table does not
follow yet is entered with its addresses, state, cgroup and netns, start_ns now and F_OLDER.
Its owner is unknown to the kernel until a task accepts or closes it; user space finds it in
/proc by the socket inode the walk writes (one OLDER_ENTERED per connection). A socket no
process holds yet waits in a listener's accept queue: F_PASSIVE. One whose local port a
listener holds in its namespace was accepted already: F_PASSIVE | F_ACCEPTED_BEFORE. The
listeners' ports are known in time: the kernel's iterator walks the listening hash before the
established one (into `listeners`), and connect() never picks a port a listener holds.

A record that overflows the seq_file buffer is dropped and its socket visited again by the
next read(): already F_OLDER, it only gets its record again. The socket is locked while the
program runs, so its transitions wait. Streaming, each is also sent as an event of kind
"existing" (bpf_perf_event_output from a tracing program takes its registers from a per-CPU
scratch area, not the context: the perf buffer works too).
"""
from bpfhook import records
from bpfhook.records import CONN, EVENT, OLDER_ENTERED
from pybpf.asm import Program
from pybpf.maps import Map
from pybpf.uapi import MapType

from .conn_common import (IPPROTO_TCP, conn_at, claim_slot, copy_shared, emit, find_conn, sock_addresses,
                          sock_owner, store_conn, typed_field)

FUNC = "bpf_iter_tcp"  # the iterator target's function: the program's attach_btf_id
# struct bpf_iter__tcp { struct bpf_iter_meta *meta; struct sock_common *sk_common; uid_t uid; }
CTX_META, CTX_SK_COMMON = 0, 8
META_SEQ = 0  # struct bpf_iter_meta { struct seq_file *seq; ... }
LISTEN, CLOSE = records.TCP_STATE_IDS["LISTEN"], records.TCP_STATE_IDS["CLOSE"]
LISTENERS_MAX = 4096  # listening ports remembered per run (more: those connections keep no direction)


def listeners_map():
    """The walk's `listeners` map (LISTENER_KEY -> u8): create one per enter_older."""
    return Map(MapType.HASH, key=records.LISTENER_KEY.sizeof(), value=1, max_entries=LISTENERS_MAX,
               name="listeners")


def build(maps, kernel, listeners):
    """The iterator program: load as tracing, expected_attach_type trace_iter, attach_btf_id
    kernel.func(FUNC)[0]; run with pybpf.attach.iterator and run_iterator. listeners: a
    listeners_map()."""
    p = Program("bh_existing", prog_type="tracing")
    ev = p.stack.alloc(EVENT)
    conn = p.stack.alloc(CONN)
    buf = p.stack.alloc(32)
    key = p.stack.alloc(8)
    scratch = p.stack.alloc(8)
    slot = p.stack.alloc(8)
    over = p.stack.alloc(8)  # the entry a connection found late has (F_FOUND_LATE), or 0
    entered = p.stack.alloc(OLDER_ENTERED)

    p.r9 = p.r1
    full_tcp_sock(p, p.r9)
    p.r8 = typed_field(p.r6, kernel, "sk_state")
    with p.If(p.r8 == CLOSE):
        p.exit(0)
    ev.zero()
    sock_addresses(p, kernel, ev, buf, p.r6, typed=True)
    sock_owner(p, kernel, ev, scratch, p.r6, typed=True)
    _listener_key(p, ev, conn)  # (conn: scratch space until the CONN is built)
    with p.If(p.r8 == LISTEN):
        p.r1 = 1
        scratch.u8[0] = p.r1
        p.call("map_update_elem", listeners, conn, scratch, 0)
        p.exit(0)
    _socket_inode(p, kernel, entered)
    slot.u64[0] = 0
    over.u64[0] = 0
    find_conn(p, maps, p.r6, key, scratch, "pointer", slot)
    with p.If(p.r7 != 0):
        p.r1 = conn_at(p, p.r7).state
        with p.If(p.r1 != CLOSE):  # followed already
            p.r1 = conn_at(p, p.r7).flags
            p.r2 = p.r1
            p.r2 &= records.F_OLDER
            with p.If(p.r2 != 0):
                # Entered by this walk: a socket whose record overflowed the seq_file buffer is
                # visited again by the next read(), and only its record is due
                _write_entered(p, key, entered)
                p.exit(0)
            p.r1 &= records.F_FOUND_LATE
            with p.If(p.r1 == 0):  # opened since the state program was attached
                p.exit(0)
            # Found late by the state program at a transition since it was attached, before
            # this walk reached it: an older connection, entered here over that entry
            over.u64[0] = p.r7

    ev.protocol = IPPROTO_TCP
    ev.flags = records.F_OLDER
    p.r2 = typed_field(p.r6, kernel, "sk_socket")
    with p.If(p.r2 == 0):  # waiting in an accept queue
        ev.flags = records.F_OLDER | records.F_PASSIVE
    with p.Else():
        p.call("map_lookup_elem", listeners, conn)
        with p.If(p.r0 != 0):
            ev.flags = records.F_OLDER | records.F_PASSIVE | records.F_ACCEPTED_BEFORE
    conn.zero()
    copy_shared(p, ev, conn)
    conn.state = p.r8
    p.call("ktime_get_ns")
    conn.start_ns = p.r0
    ev.ts_ns = p.r0

    p.r4 = over.u64[0]
    if maps.slots:
        with p.If(p.r4 == 0):
            claim_slot(p, slot, p.r6)
    store_conn(p, maps, p.r4, conn, key)  # (r4 0: into conns; its slot is another live connection's)
    if maps.stream:
        ev.sock = p.r6
        ev.newstate = p.r8
        ev.kind = records.EV_EXISTING
        emit(p, maps, ev, p.r9, scratch)
    _write_entered(p, key, entered)
    p.exit(0)
    return p


def full_tcp_sock(p, ctx):
    """r6 = the tcp_sock of this step of a TCP socket walk (`ctx`: the register holding the
    program's context); exits at the end of the walk, and for a mini-socket (TIME_WAIT, request)."""
    p.r1 = ctx.u64[CTX_SK_COMMON]
    with p.If(p.r1 == 0):  # the end of the walk
        p.exit(0)
    p.call("skc_to_tcp_sock", p.r1)  # NULL for mini-sockets and other protocols
    with p.If(p.r0 == 0):
        p.exit(0)
    p.r6 = p.r0


def _socket_inode(p, kernel, entered):
    """entered.inode = the inode number of the socket (struct socket) holding the tcp_sock at r6,
    or 0 when none does. Typed loads: through a NULL pointer they read 0."""
    p.r1 = typed_field(p.r6, kernel, "sk_socket")
    p.r1 = typed_field(p.r1, kernel, "socket_file")
    p.r1 = typed_field(p.r1, kernel, "file_inode")
    p.r1 = typed_field(p.r1, kernel, "inode_ino")
    entered.inode = p.r1


def _write_entered(p, key, entered):
    """The OLDER_ENTERED record of the connection (its sock from find_conn's key) to the walk's
    output: what user space counts, and finds owners by."""
    p.r1 = key.u64[0]
    entered.sock = p.r1
    write_out(p, p.r9, entered, OLDER_ENTERED.sizeof())


def write_out(p, ctx, record, size):
    """bpf_seq_write of `size` bytes at stack slot `record` to the walk's output (`ctx`: the
    register holding the program's context)."""
    p.r1 = ctx.u64[CTX_META]
    p.r1 = p.r1.u64[META_SEQ]
    p.call("seq_write", p.r1, record, size)


def _listener_key(p, ev, key):
    """A LISTENER_KEY at stack slot `key` from the EVENT's netns and local port."""
    key = key.cast(records.LISTENER_KEY)
    p.r1 = ev.netns
    key.netns = p.r1
    p.r1 = ev.sport
    key.u64[key.offsetof("port")] = p.r1  # 8 bytes: the padding zeroed with the port
