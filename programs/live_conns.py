"""Live connections' bytes so far: a TCP socket iterator (bpf_iter_tcp, Linux 5.9) that
Monitor.refresh_live() runs before each report copies tcp_sock.bytes_sent and
bytes_received into the entry of every connection the table follows.

The state program reads a connection's bytes only at its close (one read per connection,
nothing on its data path); without this walk a long-lived connection would count no bytes
until it ends. Between reports it costs nothing. The kernel runs the program with the
socket locked, so the socket's own transitions (the close among them) wait for it.

bytes_received counts the peer's FIN (one sequence number): taken out for a socket whose
state says the FIN arrived, as the close does (conn_state._drop_fin).
"""
from bpfhook import records
from pybpf.asm import Program

from .conn_common import C, find_conn, typed_field
from .existing import full_tcp_sock

CLOSE = records.TCP_STATE_IDS["CLOSE"]
# States of a live full socket that has the peer's FIN (TIME_WAIT sockets are not full ones)
FIN_IN_MASK = sum(1 << records.TCP_STATE_IDS[s] for s in ("CLOSE_WAIT", "LAST_ACK", "CLOSING"))


def build(maps, kernel):
    """The iterator program: load as tracing, expected_attach_type trace_iter, attach_btf_id
    kernel.func(existing.FUNC)[0] (the same target); run with pybpf.attach.iterator and
    run_iterator (it writes nothing)."""
    p = Program("bh_live_conns", prog_type="tracing")
    key = p.stack.alloc(8)
    scratch = p.stack.alloc(8)

    full_tcp_sock(p, p.r1)
    find_conn(p, maps, p.r6, key, scratch, "pointer")
    with p.If(p.r7 == 0):  # not followed
        p.exit(0)
    p.r1 = p.r7.u8[C["state"]]
    with p.If(p.r1 == CLOSE):  # an ended connection's entry, kept for the next socket here
        p.exit(0)
    p.r1 = typed_field(p.r6, kernel, "bytes_sent")
    p.r7.u64[C["bytes_sent"]] = p.r1
    p.r2 = typed_field(p.r6, kernel, "sk_state")
    p.r1 = FIN_IN_MASK
    p.r1 >>= p.r2
    p.r1 &= 1
    p.r2 = typed_field(p.r6, kernel, "bytes_received")
    with p.If(p.r2 >= p.r1):
        p.r2 -= p.r1
    p.r7.u64[C["bytes_received"]] = p.r2
    p.exit(0)
    return p
