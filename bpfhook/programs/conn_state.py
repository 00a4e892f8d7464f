"""TCP connection lifecycle from the tracepoint inet_sock_set_state, attached raw: as tp_btf
where the kernel has it (the socket argument is BTF-typed: plain loads), else as a raw
tracepoint reading through bpf_probe_read_kernel (HOOKS). Not the perf tracepoint
sock:inet_sock_set_state, which formats every field before any program runs.

Each transition (sk, oldstate, newstate) of a socket, followed by its struct sock address
in the connection table (its slot, else conns: conn_common.find_conn):

    CLOSE -> SYN_SENT      connect(), process context: new entry, owned by the current task
    CLOSE -> SYN_RECV      handshake, softirq: new entry, passive, no owner until accept()
    SYN_* -> any           the ports and addresses again: a connect() has no source port at
                           SYN_SENT, a listener's child no peer address at SYN_RECV
    -> FIN_WAIT1, LAST_ACK close()/shutdown(), process context: an entry without an owner
                           takes the closing task
    any -> CLOSE           bytes from tcp_sock, duration; the entry stays, in state CLOSE
    CLOSE/LISTEN -> any, at a live entry: that entry's close was skipped, and not made good
                           at its destroy (conn_destroy.py): ended first (_end_if_stale)
    other, no entry        a connection whose opening was not seen (a skipped run, an LRU
                           eviction): followed from here (_found_late)

An ended entry is not deleted: its slot is marked ended, and in conns it stays in state
CLOSE, because the slab soon hands the freed address to a new socket, written over it in
place (cheaper than an insert and a delete); user space bounds them (Monitor.trim_closed).

Bytes: tcp_sock.bytes_sent (payload sent, retransmissions included) and bytes_received
(payload received; it counts the peer's FIN too, taken out here). cgroup and netns come
from the socket, never from the current task, which in softirq is whoever was interrupted.
"""
import errno

from bpfhook import records
from bpfhook.records import CONN, EVENT
from pybpf.asm import Program, Reg
from pybpf.features import TP_BTF_PREFIX

from .conn_common import (IPPROTO_TCP, account, bucket_index, claim_slot, conn_at, copy_shared, count_lost,
                          current_task, define_metrics, emit, end_slot, exit_unless_tcp, find_conn, kread,
                          lookup_conns, mark_conn, remember, sock_addresses, sock_field, sock_owner, stat_add,
                          stat_max, store_conn, task_reader, typed_field, without_fin)

RAW_TRACEPOINT = "inet_sock_set_state"
TP_BTF = TP_BTF_PREFIX + RAW_TRACEPOINT  # the typedef a tp_btf program's attach_btf_id names
HOOKS = ("tp_btf", "raw_tracepoint")  # best first
# struct bpf_raw_tracepoint_args: u64 args[]: (const struct sock *sk, int oldstate, int newstate)
ARG_SK, ARG_OLDSTATE, ARG_NEWSTATE = 0, 8, 16

SYN_SENT, SYN_RECV, CLOSE, LISTEN, ESTABLISHED = (records.TCP_STATE_IDS[s] for s in (
    "SYN_SENT", "SYN_RECV", "CLOSE", "LISTEN", "ESTABLISHED"))
# sk_err at a connect()'s close -> EVENT.failure (anything else: FAIL_OTHER)
FAILURES = {errno.ECONNREFUSED: records.FAIL_REFUSED, errno.ETIMEDOUT: records.FAIL_TIMEOUT}
UNTIMED = records.F_FOUND_LATE | records.F_OLDER  # start_ns is when found, not the opening
# What an opening comes from: connect() from CLOSE, a listener's child (a clone of it) from LISTEN
OPENED_FROM_MASK = (1 << CLOSE) | (1 << LISTEN)
# States entered only in the closing task (tcp_close(), tcp_shutdown()): process context
CLOSER_MASK = sum(1 << records.TCP_STATE_IDS[s] for s in ("FIN_WAIT1", "LAST_ACK"))

# States a connection is only in after the peer's FIN arrived (FIN_WAIT2 ends in CLOSE through
# TIME_WAIT, i.e. on the peer's FIN, unless its timer expires: then one byte too few is reported).
FIN_SEEN_MASK = sum(1 << records.TCP_STATE_IDS[s] for s in ("CLOSE_WAIT", "LAST_ACK", "CLOSING", "TIME_WAIT",
                                                             "FIN_WAIT2"))

# States an abort (close() with SO_LINGER 0 or unread data, tcp_disconnect) goes to CLOSE from
# and then sends a reset; no other way from them to CLOSE leaves sk_err 0 (a reset received, a
# timeout set it). FIN_WAIT2's usual way to CLOSE (through TIME_WAIT) leaves it 0 too: left out.
ABORT_FROM_MASK = sum(1 << records.TCP_STATE_IDS[s] for s in ("ESTABLISHED", "CLOSE_WAIT", "SYN_RECV",
                                                              "FIN_WAIT1"))


def build(maps, kernel, typed=False):
    """The program. maps: conn_common.Maps; kernel: conn_common.KernelOffsets.

    typed=False: a raw tracepoint program (load as raw_tracepoint); the socket is read with
    bpf_probe_read_kernel. typed=True: a tp_btf one (load as tracing, trace_raw_tp, attach_btf_id
    kernel.func(TP_BTF)[0]); the socket argument is a BTF-typed pointer, read with plain loads."""
    p = Program("bh_conn_state", prog_type="tracing" if typed else "raw_tracepoint")
    task = task_reader(kernel, p.prog_type)
    # What every run touches nearest the caller's frame; what only openings and closes use,
    # below it.
    key = p.stack.alloc(8)
    scratch = p.stack.alloc(8)
    reuse = p.stack.alloc(8)  # an ended connection's entry in conns at this address, or 0
    slot = p.stack.alloc(8)  # the socket's conn_slots slot (find_conn)
    dest = p.stack.alloc(8)  # where an opening's CONN goes: its claimed slot, or 0
    ev = p.stack.alloc(EVENT)
    conn = p.stack.alloc(CONN)
    buf = p.stack.alloc(32)  # kread_fields' runs of socket fields
    index = p.stack.alloc(8)  # a histogram bucket (bucket_index)

    p.r9 = p.r1  # ctx: the arguments
    oldstate = p.r9.u64[ARG_OLDSTATE]
    p.r6 = p.r9.u64[ARG_SK]
    p.r8 = p.r9.u64[ARG_NEWSTATE]
    p.r8 &= 0xFF
    reuse.u64[0] = 0
    slot.u64[0] = 0
    dest.u64[0] = 0
    find_conn(p, maps, p.r6, key, scratch, "pointer" if typed else "scalar", slot, then_conns=False)
    if maps.slots:
        _claim_at_opening(p, maps, kernel, ev, scratch, slot, dest, typed)
        p.r1 = dest.u64[0]
        with p.If(p.r1 == 0):
            lookup_conns(p, maps, key)
    else:
        lookup_conns(p, maps, key)
    with p.If(p.r7 != 0):
        p.r1 = conn_at(p, p.r7).state
        with p.If(p.r1 == CLOSE):  # a connection that ended: this is a new socket at its freed address
            reuse.u64[0] = p.r7
            p.r7 = 0
        with p.Else():
            _end_if_stale(p, maps, ev, slot, reuse, scratch)
    with p.If(p.r7 == 0):  # a socket we do not follow (yet)
        p.r1 = dest.u64[0]
        with p.If(p.r1 == 0):  # (a claimed slot's socket is a TCP one)
            exit_unless_tcp(p, kernel, scratch, p.r6, typed)  # SCTP uses the tracepoint too
        with p.If(_in_handshake(p, p.r8)):  # an opening: start following it
            _event_from_sock(p, kernel, ev, buf, scratch, typed)
            with p.If(p.r8 == SYN_SENT):  # connect(): we run in the connecting task
                current_task(p, ev, cgroup=False, task=task)
            with p.Else():  # a listener's child: its owner comes with accept() (or close())
                ev.flags = records.F_PASSIVE
            _new_conn(p, maps, ev, conn, key, reuse, dest, scratch)
        with p.Else():
            with p.If(p.r8 == CLOSE):
                p.r1 = p.r9.u64[ARG_OLDSTATE]
                with p.If(p.r1 != LISTEN):  # a connection we never saw open (evicted, or older than us)
                    count_lost(p, maps, scratch, records.LOST_CONNS)
                if maps.stream:
                    _event_from_sock(p, kernel, ev, buf, scratch, typed)
            with p.Else():
                _found_late(p, maps, kernel, ev, conn, buf, key, reuse, dest, scratch, task, typed)
    with p.Else():
        # The entry's state, not the tracepoint's oldstate: the two differ after a run the kernel
        # skipped, and a connect() skipped at ESTABLISHED would otherwise keep source port 0
        with p.If(_in_handshake(p, conn_at(p, p.r7).state)):  # out of the handshake: ports and peer are final
            sock_addresses(p, kernel, conn_at(p, p.r7), buf, p.r6, typed)
            with p.If(p.r8 == ESTABLISHED):
                _established(p, maps, scratch, index)
        conn_at(p, p.r7).state = p.r8
        _owner_from_closer(p, task)
        with p.If(p.r8 == CLOSE):
            _abort_reset(p, kernel, scratch, oldstate, typed)
            event_from_conn(p, ev, oldstate)
            end_conn(p, maps, kernel, ev, slot, scratch, index, typed)
        if maps.stream:
            with p.Else():
                event_from_conn(p, ev, oldstate)
    count_transition(p, maps, scratch, oldstate)
    if maps.stream:
        if maps.transitions:
            emit(p, maps, ev, p.r9, scratch, count=False)
        else:  # an opening or a close: sent; a transition in between: counted only
            with p.If(_in_handshake(p, p.r8)):
                emit(p, maps, ev, p.r9, scratch, count=False)
            with p.If(p.r8 == CLOSE):
                emit(p, maps, ev, p.r9, scratch, count=False)
    p.exit(0)
    define_metrics(p, maps)
    return p


def end_conn(p, maps, kernel, ev, slot, scratch, index, typed):
    """The close of the connection whose CONN is at r7 (r6: its struct sock; slot: find_conn's;
    ev: event_from_conn's header; index: 8 spare stack bytes): its EVENT completed (kind close,
    duration, bytes and smoothed RTT from the tcp_sock, why a connect() failed), counted in its
    cgroup's and namespace's metrics and the duration stats, remembered for the report, and
    its slot marked ended. The caller sends ev."""
    ev.kind = records.EV_CLOSE
    p.r1 = ev.ts_ns
    p.r2 = conn_at(p, p.r7).start_ns
    p.r1 -= p.r2
    ev.duration_ns = p.r1
    _tcp_bytes(p, kernel, ev, typed)
    _drop_fin(p, ev)
    p.r1 = ev.oldstate
    with p.If(p.r1 == SYN_SENT):  # a connect() that failed (rare: its own accounting)
        _failed(p, maps, kernel, ev, scratch, index, typed)
    bucket_index(p, ev.srtt_us, records.RTT_BUCKETS_US, index)
    p.r1 = ev.srtt_us
    with p.If(p.r1 == 0):  # no RTT sample: no observation
        index.u64[0] = records.HISTOGRAM_BUCKETS
    account(p, (ev.cgroup_id, ev.netns),
            [("closed", 1), ("bytes_sent", ev.bytes_sent),
             ("bytes_received", ev.bytes_received),
             ("rtt_sum_us", ev.srtt_us)], atomic=False,
            caches=(maps.cache_cgroup, maps.cache_netns), scratch=scratch,
            bump=("rtt_buckets", index.u64[0], records.HISTOGRAM_BUCKETS))
    stat_add(p, maps, scratch, records.STAT_DURATION_TOTAL, ev.duration_ns, atomic=False)
    stat_max(p, maps, scratch, records.STAT_DURATION_MAX, ev.duration_ns)
    remember(p, maps, ev, scratch)
    end_slot(p, slot, p.r6)  # last: from here another socket may take the slot
    with p.If(p.r0 == 0):  # the entry stays in conns, counted for Monitor.trim_closed
        stat_add(p, maps, scratch, records.STAT_CLOSED_KEPT, 1, atomic=False)


def _abort_reset(p, kernel, scratch, oldstate, typed):
    """An abort's reset counted in the CONN at r7 (r6: its struct sock) before its close event
    is made: the kernel sends it just after this transition (tcp_disconnect sets CLOSE first),
    when programs/tcp_health.py counts it in the metrics only. Only a close from
    ABORT_FROM_MASK, where it costs one read of sk_err."""
    with p.If(_state_in(p, ABORT_FROM_MASK, oldstate)):
        sock_field(p, kernel, scratch, p.r6, "sk_err", typed)
        with p.If(p.r1 == 0):
            conn = conn_at(p, p.r7)
            p.r1 = conn.resets_sent
            p.r1 += 1
            conn.resets_sent = p.r1


def _failed(p, maps, kernel, ev, scratch, index, typed):
    """ev.failure of a connect() closed in SYN_SENT (r6: its struct sock), from sk_err, which
    the kernel sets before it closes the socket (tcp_reset: ECONNREFUSED; tcp_write_err: the
    last ICMP error, else ETIMEDOUT), counted in its cgroup's and namespace's metrics."""
    sock_field(p, kernel, scratch, p.r6, "sk_err", typed)
    p.r2 = records.FAIL_OTHER
    for err, reason in FAILURES.items():
        with p.If(p.r1 == err):
            p.r2 = reason
    ev.failure = p.r2
    p.r2 -= records.FAIL_REFUSED
    index.u64[0] = p.r2
    account(p, (ev.cgroup_id, ev.netns), [], atomic=False,
            caches=(maps.cache_cgroup, maps.cache_netns), scratch=scratch,
            bump=("failed_refused", index.u64[0], len(records.FAIL_REASONS)))


def _established(p, maps, scratch, index):
    """The handshake of the connection at r7 completed: its connect_us (unless its opening
    went unseen), and for a connect(), counted with its time in its cgroup's and namespace's
    metrics (the server side's is only in its CONN and close event: a listener's child
    appears in SYN_RECV when the handshake's last ACK arrives, so it measures nearly nothing)."""
    conn = conn_at(p, p.r7)
    p.r1 = conn.flags
    with p.If(~(p.r1 & UNTIMED)):
        p.call("ktime_get_ns")
        p.r1 = conn.start_ns
        p.r0 -= p.r1
        p.r0 //= 1000
        conn.connect_us = p.r0
        p.r1 = conn.flags
        with p.If(~(p.r1 & records.F_PASSIVE)):
            bucket_index(p, conn.connect_us, records.CONNECT_BUCKETS_US, index)
            account(p, (conn.cgroup_id, conn.netns),
                    [("connects", 1), ("connect_sum_us", conn.connect_us)], atomic=False,
                    caches=(maps.cache_cgroup, maps.cache_netns), scratch=scratch,
                    bump=("connect_buckets", index.u64[0], records.HISTOGRAM_BUCKETS))


def _claim_at_opening(p, maps, kernel, ev, scratch, slot, dest, typed):
    """A socket that opens (connect() from CLOSE, a listener's child from LISTEN) claims its
    slot at once: dest = its CONN there, or 0 (another live connection holds the slot).
    Claimed, it needs no look in conns (one fewer hash lookup per opening). Its slot holding
    this address already (r7) means an earlier socket here ended in a run the kernel skipped
    (counted as missed): the entry is stale, counted closed (_count_unseen_close) and
    written over."""
    with p.If(_state_in(p, OPENED_FROM_MASK, p.r9.u64[ARG_OLDSTATE])):
        with p.If(_in_handshake(p, p.r8)):
            with p.If(p.r7 != 0):
                dest.u64[0] = p.r7
                _count_unseen_close(p, maps, ev, scratch)
                p.r7 = 0
            with p.Else():
                exit_unless_tcp(p, kernel, scratch, p.r6, typed)  # before it takes a slot
                claim_slot(p, slot, p.r6)
                dest.u64[0] = p.r4


def _end_if_stale(p, maps, ev, slot, reuse, scratch):
    """The live entry at r7, met by a socket coming from CLOSE or LISTEN, is stale: a new socket
    lives at that address, and the entry's close was skipped. Ended here as that run would have
    (_count_unseen_close; its slot marked ended; in conns, state CLOSE), and r7 = 0. (A claimed
    slot's stale entry was written over by _claim_at_opening already.)"""
    with p.If(_state_in(p, OPENED_FROM_MASK, p.r9.u64[ARG_OLDSTATE])):
        _count_unseen_close(p, maps, ev, scratch)  # first: once the slot is marked, another socket may take it
        end_slot(p, slot, p.r6)
        with p.If(p.r0 == 0):
            p.r1 = CLOSE
            conn_at(p, p.r7).state = p.r1
            stat_add(p, maps, scratch, records.STAT_CLOSED_KEPT, 1, atomic=False)
            reuse.u64[0] = p.r7
        p.r7 = 0


def _count_unseen_close(p, maps, ev, scratch):
    """The stale entry at r7, a connection whose close run the kernel skipped, counts as closed
    in its cgroup's and namespace's metrics, with the bytes it had at the last walk that met
    it (live_conns), so that opened = closed + active still holds; and in
    stats[STAT_CLOSED_UNSEEN], since it has no duration. Streaming, its close is sent now
    (F_CLOSE_UNSEEN: those bytes, duration 0), so that a reader sees every connection end."""
    account(p, (conn_at(p, p.r7).cgroup_id, conn_at(p, p.r7).netns),
            [("closed", 1), ("bytes_sent", conn_at(p, p.r7).bytes_sent),
             ("bytes_received", conn_at(p, p.r7).bytes_received)], atomic=False,
            caches=(maps.cache_cgroup, maps.cache_netns), scratch=scratch)
    stat_add(p, maps, scratch, records.STAT_CLOSED_UNSEEN, 1, atomic=False)
    if maps.stream:
        event_from_conn(p, ev, conn_at(p, p.r7).state)
        ev.newstate = CLOSE
        ev.kind = records.EV_CLOSE
        for name in ("bytes_sent", "bytes_received"):
            p.r1 = conn_at(p, p.r7)[name]
            ev[name] = p.r1
        p.r1 = ev.flags
        p.r1 |= records.F_CLOSE_UNSEEN
        ev.flags = p.r1
    emit(p, maps, ev, p.r9, scratch)  # (counted, as streaming would have sent it)


def _found_late(p, maps, kernel, ev, conn, buf, key, reuse, dest, scratch, task, typed):
    """A transition, neither an opening nor a close, of a socket with no entry: its opening run
    was skipped (both runs of a passive opening fall in one softirq), the LRU evicted it, or it
    is older than us and the walk has not reached it yet (existing.py takes it over). Followed
    from here: F_FOUND_LATE, start_ns now, its closer as owner, no direction; counted at its
    close, not lost. A listener's own transitions (CLOSE -> LISTEN) are no connection."""
    with p.If(p.r8 != records.TCP_STATE_IDS["LISTEN"]):
        _event_from_sock(p, kernel, ev, buf, scratch, typed)
        ev.flags = records.F_FOUND_LATE
        with p.If(_state_in(p, CLOSER_MASK, p.r8)):
            current_task(p, ev, cgroup=False, task=task)
            ev.flags = records.F_FOUND_LATE | records.F_OWNER_FROM_CLOSE
        _new_conn(p, maps, ev, conn, key, reuse, dest, scratch)
    if maps.stream:
        with p.Else():
            _event_from_sock(p, kernel, ev, buf, scratch, typed)


def _state_in(p, states, state):
    """The condition: `state` (a register, or memory: loaded into r2) is one of the states whose
    bits `states` sets (r1 clobbered)."""
    if not isinstance(state, Reg):
        p.r2 = state
        state = p.r2
    p.r1 = states
    p.r1 >>= state
    return p.r1 & 1


def _in_handshake(p, state):
    """The condition: `state` (a register, or memory) is SYN_SENT or SYN_RECV (into r1)."""
    p.r1 = state
    p.r1 -= SYN_SENT
    return p.r1 <= SYN_RECV - SYN_SENT


def _event_header(p, ev, oldstate):
    """ev zeroed, then time, socket (r6), states (`oldstate`: memory; the new one: r8) and
    kind (state) of this transition."""
    ev.zero()
    p.call("ktime_get_ns")
    ev.ts_ns = p.r0
    ev.sock = p.r6
    p.r1 = oldstate
    ev.oldstate = p.r1
    ev.newstate = p.r8
    ev.kind = records.EV_STATE


def _event_from_sock(p, kernel, ev, buf, scratch, typed):
    """The EVENT of a transition of a socket with no map entry: everything from the sock.

    Typed, the cgroup and netns pointers are walked from bpf_skc_to_tcp_sock's copy of the
    socket pointer, not from the tracepoint's argument: a pointer field loaded through a
    trusted pointer (the argument) makes the verifier search all of vmlinux BTF for the field's
    trust annotations at every check of that load (load time: docs/benchmarks.md); through the
    helper's untrusted copy it does not. One helper call per opening."""
    _event_header(p, ev, p.r9.u64[ARG_OLDSTATE])
    ev.protocol = IPPROTO_TCP
    sock_addresses(p, kernel, ev, buf, p.r6, typed)
    if typed:
        p.call("skc_to_tcp_sock", p.r6)
        with p.If(p.r0 != 0):  # (a TCP socket: exit_unless_tcp ran)
            sock_owner(p, kernel, ev, scratch, p.r0, typed)
    else:
        sock_owner(p, kernel, ev, scratch, p.r6, typed)


def _tcp_bytes(p, kernel, ev, typed):
    """ev.bytes_sent, bytes_received and srtt_us from the tcp_sock at r6. A typed sock pointer reaches
    the tcp_sock fields through bpf_skc_to_tcp_sock (the verifier allows loads only within
    the pointer's type: struct sock)."""
    if not typed:
        kread(p, ev, ev.offsetof("bytes_sent"), 8, p.r6, kernel.bytes_sent)
        kread(p, ev, ev.offsetof("bytes_received"), 8, p.r6, kernel.bytes_received)
        kread(p, ev, ev.offsetof("srtt_us"), 4, p.r6, kernel.srtt_us)
        p.r1 = ev.srtt_us
    else:
        p.call("skc_to_tcp_sock", p.r6)
        p.r1 = 0
        with p.If(p.r0 != 0):
            p.r1 = typed_field(p.r0, kernel, "bytes_sent")
            ev.bytes_sent = p.r1
            p.r1 = typed_field(p.r0, kernel, "bytes_received")
            ev.bytes_received = p.r1
            p.r1 = typed_field(p.r0, kernel, "srtt_us")
    p.r1 >>= 3  # (the kernel keeps it times 8)
    ev.srtt_us = p.r1


def event_from_conn(p, ev, oldstate):
    """The EVENT of a transition (from `oldstate`, memory) of the connection whose CONN is at r7."""
    _event_header(p, ev, oldstate)
    ev.protocol = IPPROTO_TCP
    copy_shared(p, conn_at(p, p.r7), ev)


def _owner_from_closer(p, task):
    """A connection with no owner yet (passive, and no accept hook saw it: accept(fd, NULL,
    NULL) under the getpeername hook) takes the task that closes it. Entering FIN_WAIT1 or
    LAST_ACK is always that task's close() or shutdown(), in process context."""
    with p.If(_state_in(p, CLOSER_MASK, p.r8)):
        p.r1 = conn_at(p, p.r7).pid
        with p.If(p.r1 == 0):
            current_task(p, conn_at(p, p.r7), task=task)
            mark_conn(p, p.r7, records.F_OWNER_FROM_CLOSE)


def count_transition(p, maps, scratch, oldstate):
    """stats[STAT_TRANSITIONS + old * 16 + new] += 1: old from `oldstate` (memory), new from r8
    (r6 clobbered)."""
    p.r6 = oldstate
    p.r6 &= 15
    p.r6 <<= 4
    p.r1 = p.r8
    p.r1 &= 15
    p.r6 += p.r1
    p.r6 += records.STAT_TRANSITIONS
    stat_add(p, maps, scratch, p.r6, 1, atomic=False)


def _drop_fin(p, ev):
    """bytes_received without the peer's FIN, when the state before CLOSE says it arrived."""
    p.r2 = ev.oldstate
    p.r3 = ev.bytes_received
    without_fin(p, p.r3, p.r2, FIN_SEEN_MASK)
    ev.bytes_received = p.r3


def _new_conn(p, maps, ev, conn, key, reuse, dest, scratch):
    """The CONN of a new connection, from the EVENT of its opening, into its slot (`dest`, when
    it claimed one), else over the ended entry in conns at this address (`reuse`), else
    inserted there."""
    conn.zero()
    p.r1 = ev.ts_ns
    conn.start_ns = p.r1
    copy_shared(p, ev, conn)
    conn.state = p.r8
    p.r1 = dest.u64[0]
    with p.If(p.r1 == 0):
        _unkeep(p, maps, reuse, scratch)
        p.r1 = reuse.u64[0]
        dest.u64[0] = p.r1
    p.r1 = dest.u64[0]
    store_conn(p, maps, p.r1, conn, key)


def _unkeep(p, maps, reuse, scratch):
    """An ended entry in conns about to be written over is kept no more."""
    p.r1 = reuse.u64[0]
    with p.If(p.r1 != 0):
        stat_add(p, maps, scratch, records.STAT_CLOSED_KEPT, -1, atomic=False)
