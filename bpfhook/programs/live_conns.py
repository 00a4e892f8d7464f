"""Live connections at report time: a TCP socket iterator (bpf_iter_tcp, 5.9) that
Monitor.refresh_live() runs in every network namespace before each report. For each live
connection the table follows, it copies tcp_sock.bytes_sent and bytes_received into the
entry (the state program reads them only at the close) and writes the connection's
CONN_KEY: an entry the walk does not meet lost its close, and user space stops listing it.

The socket is locked while the program runs, so its transitions wait. A key that overflows
the seq_file buffer is written at the next read(). bytes_received counts the peer's FIN,
taken out as at the close (conn_common.without_fin).
"""
from bpfhook import records
from pybpf.asm import Program

from .conn_common import conn_at, find_conn, typed_field, without_fin
from .existing import full_tcp_sock, write_out

CLOSE = records.TCP_STATE_IDS["CLOSE"]
# States of a live full socket that has the peer's FIN (TIME_WAIT sockets are not full ones)
FIN_IN_MASK = sum(1 << records.TCP_STATE_IDS[s] for s in ("CLOSE_WAIT", "LAST_ACK", "CLOSING"))


def build(maps, kernel):
    """The iterator program: load as tracing, expected_attach_type trace_iter, attach_btf_id
    kernel.func(existing.FUNC)[0] (the same target); run with pybpf.attach.iterator and
    run_iterator: its output is the CONN_KEY of each connection met."""
    p = Program("bh_live_conns", prog_type="tracing")
    key = p.stack.alloc(8)
    scratch = p.stack.alloc(8)

    p.r9 = p.r1  # ctx
    full_tcp_sock(p, p.r9)
    find_conn(p, maps, p.r6, key, scratch, "pointer")
    with p.If(p.r7 == 0):  # not followed
        p.exit(0)
    p.r1 = conn_at(p, p.r7).state
    with p.If(p.r1 == CLOSE):  # an ended connection's entry, kept for the next socket here
        p.exit(0)
    p.r1 = typed_field(p.r6, kernel, "bytes_sent")
    conn_at(p, p.r7).bytes_sent = p.r1
    p.r3 = typed_field(p.r6, kernel, "sk_state")
    p.r2 = typed_field(p.r6, kernel, "bytes_received")
    without_fin(p, p.r2, p.r3, FIN_IN_MASK)
    conn_at(p, p.r7).bytes_received = p.r2
    write_out(p, p.r9, key, records.CONN_KEY.sizeof())  # (key: find_conn's, the sock)
    p.exit(0)
    return p
