"""Inbound connections attributed to the process that accepts them.

The handshake completes in softirq, where the current task is whoever was interrupted; the
accepting task is current when inet_csk_accept() returns the new sock. Four hooks see that
moment, and the monitor takes the first the kernel allows (HOOKS):

    fexit        on inet_csk_accept: the sock is ctx[nargs], nargs from its BTF prototype,
                 which changed in 6.10: (sk, flags, err, kern), then (sk, proto_accept_arg *)
    kretprobe    on inet_csk_accept: the sock is PT_REGS_RC (pt_regs offset from BTF)
    getpeername  cgroup getpeername4/6 (5.8): accept(fd, &addr, &len), what most servers
                 call, fetches the peer through inet_getname(), which runs these hooks in
                 the accepting task with ctx->sk the new socket. getpeername() runs them
                 too, so only a followed passive connection without an owner is taken.
                 accept(fd, NULL, NULL) runs nothing: its closer becomes the owner.
    tracepoint   syscalls:sys_exit_accept4/accept: the returned fd leads to the socket
                 through current->files->fdt->fd[ret]->private_data->sk. It sees every
                 accept(), but an enabled syscall tracepoint slows every system call on the
                 host (docs/benchmarks.md): it comes after getpeername.

All four end in _accepted: TCP over IPv4/IPv6 only. The event and the connection's entry
take the acceptor as owner, so the connection counts in the acceptor's cgroup even when
the listener was made in another.
"""
from bpfhook import records
from pybpf import tracefs
from pybpf.asm import Program

from .conn_common import (AF_INET, AF_INET6, IPPROTO_TCP, conn_at, copy_shared, current_task, emit,
                          exit_unless_tcp, fd_file, find_conn, kread, mark_conn, sock_addresses, sock_netns,
                          task_reader)

HOOKS = ("fexit", "kretprobe", "getpeername", "tracepoint")  # best first
GETPEERNAME_HOOKS = {4: "getpeername4", 6: "getpeername6"}
ALLOW = 1  # what a getpeername hook must return
CLOSE = records.TCP_STATE_IDS["CLOSE"]
FUNC = "inet_csk_accept"
TRACEPOINTS = ("syscalls:sys_exit_accept4", "syscalls:sys_exit_accept")


def build_fexit(maps, kernel):
    """The fexit program on inet_csk_accept (load it as tracing, trace_fexit, attach_btf_id
    kernel.func(FUNC)[0])."""
    _btf_id, nargs = kernel.func(FUNC)
    p, slots = _program("tracing")
    p.r9 = p.r1
    p.r6 = p.r9.u64[8 * nargs]  # fexit's ctx: the arguments, then the return value
    _accepted(p, maps, kernel, *slots, sk_type="pointer")
    return p


def build_kretprobe(maps, kernel):
    """The kretprobe program on inet_csk_accept."""
    p, slots = _program("kprobe")
    p.r9 = p.r1
    p.r6 = p.r9.u64[kernel.regs_rc]
    _accepted(p, maps, kernel, *slots)
    return p


def build_getpeername(maps, kernel, version):
    """The cgroup getpeername4 (version 4) or getpeername6 program; load as cgroup_sock_addr
    with expected_attach_type cgroup_inet{version}_getpeername."""
    p, slots = _program("cgroup_sock_addr")
    p.r9 = p.r1
    p.r1 = p.r9.u32[kernel.ctx_protocol]
    with p.If(p.r1 != IPPROTO_TCP):
        p.exit(ALLOW)
    p.r6 = p.r9.u64[kernel.ctx_sk]  # a struct bpf_sock view of the struct sock
    _accepted(p, maps, kernel, *slots, sk_type="pointer", ret=ALLOW, unowned_only=True)
    return p


def build(maps, kernel, tracepoint=TRACEPOINTS[0], fields=None):
    """The program for one sys_exit_accept* tracepoint (its record layout is read from tracefs)."""
    tp = fields or tracefs.tracepoint_fields(tracepoint, require=("ret",))
    ret_off = tp["ret"].offset

    p, slots = _program("tracepoint")
    _ev, buf, scratch, _key = slots
    p.r9 = p.r1
    p.r7 = p.r9.u64[ret_off]  # the new fd, or -errno
    with p.If(p.r7.s < 0):
        p.exit(0)
    fd_file(p, kernel, buf, scratch, p.r7)
    kread(p, scratch, 0, 8, scratch.u64[0], kernel.file_private_data)  # struct socket *
    kread(p, scratch, 0, 8, scratch.u64[0], kernel.socket_sk)  # struct sock *
    p.r6 = scratch.u64[0]
    _accepted(p, maps, kernel, *slots)
    return p


def _program(prog_type):
    """A program named bh_accept and its stack slots (ev, buf, scratch, key)."""
    p = Program("bh_accept", prog_type=prog_type)
    return p, (p.stack.alloc(records.EVENT), p.stack.alloc(32), p.stack.alloc(8), p.stack.alloc(8))


def _accepted(p, maps, kernel, ev, buf, scratch, key, sk_type="scalar", ret=0, unowned_only=False):
    """The rest of every hook: r6 = the accepted struct sock (or NULL), r9 = ctx, the accepting
    task current. Makes the acceptor the connection's owner, sends the accept event when
    streaming, exits with `ret`. sk_type: what r6 is (conn_common.sock_number). unowned_only,
    for getpeername (which also runs outside accept()): only a followed passive connection
    without an owner, not accepted before the monitor started, is taken.

    A followed socket has its addresses and netns in its entry: nothing more is read from it.
    Unstreamed, any other socket's accept (a Unix one, an older connection) changes nothing."""
    task = task_reader(kernel, p.prog_type)
    with p.If(p.r6 == 0):
        p.exit(ret)
    find_conn(p, maps, p.r6, key, scratch, sk_type)
    with p.If(p.r7 != 0):
        p.r1 = conn_at(p, p.r7).state
        with p.If(p.r1 == CLOSE):  # an ended connection's entry (conn_state keeps them for reuse)
            p.r7 = 0
    if unowned_only or not maps.stream:
        with p.If(p.r7 == 0):  # nothing to hand over (and, for getpeername, no accept to report)
            p.exit(ret)
    if unowned_only:
        p.r1 = conn_at(p, p.r7).pid
        with p.If(p.r1 != 0):
            p.exit(ret)
        p.r1 = conn_at(p, p.r7).flags
        p.r1 &= records.F_PASSIVE | records.F_ACCEPTED_BEFORE
        with p.If(p.r1 != records.F_PASSIVE):  # an active one, or one accepted before the monitor
            p.exit(ret)  # started (its owner is unknown): a getpeername() now is no accept
    if not maps.stream:
        current_task(p, conn_at(p, p.r7), task=task)
        mark_conn(p, p.r7, records.F_OWNER_FROM_ACCEPT)
        emit(p, maps, ev, p.r9, scratch)  # counted, as streaming would have sent it
        p.exit(ret)
        return

    ev.zero()
    with p.If(p.r7 == 0):
        _unfollowed(p, kernel, ev, buf, scratch)
    with p.Else():
        copy_shared(p, conn_at(p, p.r7), ev)  # the owner fields are replaced below
    p.call("ktime_get_ns")
    ev.ts_ns = p.r0
    ev.sock = p.r6
    ev.kind = records.EV_ACCEPT
    ev.protocol = IPPROTO_TCP
    ev.flags = records.F_OWNER_FROM_ACCEPT | records.F_PASSIVE
    current_task(p, ev, task=task)
    with p.If(p.r7 != 0):  # the new owner into the entry
        conn = conn_at(p, p.r7)
        for name in ("cgroup_id", "pid", "tid"):
            p.r1 = ev[name]
            conn[name] = p.r1
        for half in (0, 8):
            p.r1 = ev.comm.u64[half]
            conn.comm.u64[half] = p.r1
        mark_conn(p, p.r7, records.F_OWNER_FROM_ACCEPT)
    emit(p, maps, ev, p.r9, scratch)
    p.exit(ret)


def _unfollowed(p, kernel, ev, buf, scratch):
    """Addresses and netns of an accepted socket with no map entry, from the socket; exits
    unless it is an AF_INET/AF_INET6 TCP one."""
    sock_addresses(p, kernel, ev, buf, p.r6)
    p.r1 = ev.family
    p.r2 = p.r1
    with p.If(p.r1 != AF_INET):
        with p.If(p.r2 != AF_INET6):
            p.exit(0)
    exit_unless_tcp(p, kernel, scratch, p.r6)
    sock_netns(p, kernel, ev, scratch, p.r6)
