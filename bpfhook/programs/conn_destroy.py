"""A close the state program did not see, made good at the socket's destroy: the tracepoint
tcp:tcp_destroy_sock (every TCP socket, once, just before it is freed), attached as
conn_state is (HOOKS).

The kernel skips a run of a tracing program that comes while the same program runs on that
CPU (bpf_prog_info.recursion_misses): a transition in softirq interrupting the state
program in process context, nearly always a close, whose entry then stays live. This is
another program, so it still runs, and at the destroy the socket's counters are whole: it
ends the entry as conn_state would have (end_conn: exact bytes and duration, the close
event) and counts it in stats[STAT_CLOSED_AT_DESTROY]. The usual socket finds its slot
already marked ended and leaves at once. An earlier socket's entry at this address (another
dport) is left to conn_state._count_unseen_close and monitor._Gone.
"""
from bpfhook import records
from bpfhook.records import EVENT
from pybpf.asm import Program
from pybpf.features import TP_BTF_PREFIX

from .conn_common import conn_at, define_metrics, emit, find_conn, lookup_conns, sock_field, stat_add
from .conn_state import CLOSE, count_transition, end_conn, event_from_conn

RAW_TRACEPOINT = "tcp_destroy_sock"
TP_BTF = TP_BTF_PREFIX + RAW_TRACEPOINT
HOOKS = ("tp_btf", "raw_tracepoint")  # best first, as conn_state.HOOKS
ARG_SK = 0  # (const struct sock *sk)


def build(maps, kernel, typed=False):
    """The program: as conn_state.build (typed: tp_btf, attach_btf_id kernel.func(TP_BTF)[0])."""
    p = Program("bh_conn_destroy", prog_type="tracing" if typed else "raw_tracepoint")
    key = p.stack.alloc(8)
    scratch = p.stack.alloc(8)
    slot = p.stack.alloc(8)
    ev = p.stack.alloc(EVENT)

    p.r9 = p.r1  # ctx
    p.r6 = p.r9.u64[ARG_SK]
    slot.u64[0] = 0
    find_conn(p, maps, p.r6, key, scratch, "pointer" if typed else "scalar", slot, then_conns=False)
    if maps.slots:
        with p.If(p.r7 == 0):
            p.r1 = slot.u64[0]
            with p.If(p.r1 != 0):
                p.r1 = p.r1.u64[0]
                p.r2 = key.u64[0]
                p.r2 |= records.SLOT_ENDED
                with p.If(p.r1 == p.r2):  # ended in its slot: the close was seen
                    p.exit(0)
    lookup_conns(p, maps, key)
    with p.If(p.r7 == 0):  # not followed
        p.exit(0)
    p.r1 = conn_at(p, p.r7).state
    with p.If(p.r1 == CLOSE):  # ended (in conns)
        p.exit(0)
    _exit_unless_own(p, kernel, scratch, typed)

    p.r8 = CLOSE  # (the new state, for event_from_conn and count_transition)
    event_from_conn(p, ev, conn_at(p, p.r7).state)
    conn_at(p, p.r7).state = p.r8
    end_conn(p, maps, kernel, ev, slot, scratch, typed)
    stat_add(p, maps, scratch, records.STAT_CLOSED_AT_DESTROY, 1, atomic=False)
    count_transition(p, maps, scratch, ev.oldstate)
    if maps.stream:
        emit(p, maps, ev, p.r9, scratch, count=False)
    p.exit(0)
    define_metrics(p, maps)
    return p


def _exit_unless_own(p, kernel, scratch, typed):
    """Leave unless the live entry at r7 is the socket's at r6: the same peer port (an opening
    writes it; a socket that never connected has none)."""
    sock_field(p, kernel, scratch, p.r6, "sk_dport", typed)
    p.be(p.r1, 16)
    p.r2 = conn_at(p, p.r7).dport
    with p.If(p.r1 != p.r2):
        p.exit(0)
