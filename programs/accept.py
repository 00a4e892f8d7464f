"""Inbound connections attributed to the process that accepts them.

The handshake completes in softirq context, where the current task is
whoever was interrupted, so the state tracepoint cannot name the server. The
accepting task is current when inet_csk_accept() returns the new struct sock,
and three hooks see that moment; the monitor takes the first the kernel allows
(HOOKS order):

    fexit      on inet_csk_accept: ctx[nargs] is the returned sock. nargs comes
               from the function's BTF prototype, which changed in 6.10:
               (sk, flags, err, kern) before, (sk, struct proto_accept_arg *) since.
    kretprobe  on inet_csk_accept: the sock is PT_REGS_RC (pt_regs offset from BTF).
    tracepoint syscalls:sys_exit_accept4 / sys_exit_accept: the new fd leads to the
               socket through the task's own file table, read with
               bpf_probe_read_kernel at BTF offsets (no kprobes or fexit needed):
               current->files->fdt->fd[ret]->private_data (struct socket)->sk

All three end in the same code (_accepted). Only TCP sockets of
AF_INET/AF_INET6 are reported (accept() also serves Unix sockets). The event
(kind accept, F_OWNER_FROM_ACCEPT) carries the acceptor's pid, tid, comm and
cgroup and the sock address the state events are keyed by; the connection map
entry takes the acceptor as owner, and when the acceptor sits in another cgroup
than the socket was created in, the opened/active counts move to the
acceptor's cgroup.
"""
from bpfhook import records
from pybpf import tracefs
from pybpf.asm import Program

from .conn_common import (AF_INET, AF_INET6, IPPROTO_TCP, C, E, account, current_task, define_metrics, emit,
                          kread)

HOOKS = ("fexit", "kretprobe", "tracepoint")  # best first
FUNC = "inet_csk_accept"
TRACEPOINTS = ("syscalls:sys_exit_accept4", "syscalls:sys_exit_accept")


def build_fexit(maps, kernel):
    """The fexit program on inet_csk_accept (load it as tracing, trace_fexit, attach_btf_id
    kernel.func(FUNC)[0])."""
    _btf_id, nargs = kernel.func(FUNC)
    p, ev, scratch, key = _program("tracing")
    p.r9 = p.r1
    p.r6 = p.r9.u64[8 * nargs]  # fexit's ctx: the arguments, then the return value
    _accepted(p, maps, kernel, ev, scratch, key)
    return p


def build_kretprobe(maps, kernel):
    """The kretprobe program on inet_csk_accept."""
    p, ev, scratch, key = _program("kprobe")
    p.r9 = p.r1
    p.r6 = p.r9.u64[kernel.regs_rc]
    _accepted(p, maps, kernel, ev, scratch, key)
    return p


def build(maps, kernel, tracepoint=TRACEPOINTS[0], fields=None):
    """The program for one sys_exit_accept* tracepoint (its record layout is read from tracefs)."""
    tp = fields or tracefs.tracepoint_fields(tracepoint, require=("ret",))
    ret_off = tp["ret"].offset

    p, ev, scratch, key = _program("tracepoint")
    p.r9 = p.r1
    p.r7 = p.r9.u64[ret_off]  # the new fd, or -errno
    with p.If(p.r7.s < 0):
        p.exit(0)
    # current->files->fdt
    p.call("get_current_task")
    p.r6 = p.r0
    kread(p, scratch, 0, 8, p.r6, kernel.task_files)
    kread(p, scratch, 0, 8, scratch.u64[0], kernel.files_fdt)
    p.r6 = scratch.u64[0]
    kread(p, scratch, 0, 4, p.r6, kernel.fdt_max_fds)
    p.r1 = scratch.u32[0]
    with p.If(p.r7 >= p.r1):  # closed and reused by another thread already: nothing to trust
        p.exit(0)
    kread(p, scratch, 0, 8, p.r6, kernel.fdt_fd)  # struct file **fd
    p.r7 <<= 3
    p.r6 = scratch.u64[0]
    p.r6 += p.r7
    kread(p, scratch, 0, 8, p.r6, 0)  # struct file *
    kread(p, scratch, 0, 8, scratch.u64[0], kernel.file_private_data)  # struct socket *
    kread(p, scratch, 0, 8, scratch.u64[0], kernel.socket_sk)  # struct sock *
    p.r6 = scratch.u64[0]
    _accepted(p, maps, kernel, ev, scratch, key)
    return p


def _program(prog_type):
    """A program named bh_accept with its stack slots: (p, ev, scratch, key)."""
    p = Program("bh_accept", prog_type=prog_type)
    return p, p.stack.alloc(records.EVENT), p.stack.alloc(8), p.stack.alloc(8)


def _accepted(p, maps, kernel, ev, scratch, key):
    """The rest of every hook: r6 = the accepted struct sock (or NULL), r9 = ctx, and the
    accepting task current. Sends the accept event, hands the connection over, exits."""
    with p.If(p.r6 == 0):
        p.exit(0)

    ev.zero()
    kread(p, ev, E["family"], 2, p.r6, kernel.sk_family)
    p.r1 = ev.u16[E["family"]]
    p.r2 = p.r1
    with p.If(p.r1 != AF_INET):
        with p.If(p.r2 != AF_INET6):
            p.exit(0)
    kread(p, scratch, 0, kernel.size("sk_protocol"), p.r6, kernel.sk_protocol)
    p.r1 = scratch.mem(0, {1: "u8", 2: "u16", 4: "u32"}[kernel.size("sk_protocol")])
    with p.If(p.r1 != IPPROTO_TCP):
        p.exit(0)

    p.call("ktime_get_ns")
    ev.u64[E["ts_ns"]] = p.r0
    ev.u64[E["sock"]] = p.r6
    ev.u8[E["kind"]] = records.EV_ACCEPT
    ev.u8[E["protocol"]] = IPPROTO_TCP
    ev.u8[E["flags"]] = records.F_OWNER_FROM_ACCEPT
    current_task(p, ev)
    _addresses(p, kernel, ev, scratch)

    # Take the connection over: owner, and its counts if the cgroup differs.
    key.u64[0] = p.r6
    p.call("map_lookup_elem", maps.conns, key)
    p.r7 = p.r0
    with p.If(p.r7 != 0):
        p.r1 = p.r7.u64[C["netns"]]
        ev.u64[E["netns"]] = p.r1
        p.r1 = p.r7.u64[C["cgroup_id"]]
        p.r2 = ev.u64[E["cgroup_id"]]
        with p.If(p.r1 != p.r2):
            account(p, (p.r7.u64[C["cgroup_id"]],), [("opened", -1), ("active", -1)], getters=("cgroup_metrics",))
            account(p, (ev.u64[E["cgroup_id"]],), [("opened", 1), ("active", 1)], getters=("cgroup_metrics",))
        for name, type in (("cgroup_id", "u64"), ("pid", "u32"), ("tid", "u32"), ("flags", "u8")):
            p.r1 = getattr(ev, type)[E[name]]
            getattr(p.r7, type)[C[name]] = p.r1
        for half in (0, 8):
            p.r1 = ev.u64[E["comm"] + half]
            p.r7.u64[C["comm"] + half] = p.r1
    with p.Else():
        kread(p, scratch, 0, 8, p.r6, kernel.sk_net)
        kread(p, ev, E["netns"], 8, scratch.u64[0], kernel.net_cookie)
    emit(p, maps, ev, p.r9, scratch)
    p.exit(0)
    define_metrics(p, maps, netns=False)  # a move between cgroups leaves the netns counts as they are


def _addresses(p, k, ev, scratch):
    """Local and remote address and port of the sock in r6 (the server's view: local = listener's)."""
    kread(p, ev, E["sport"], 2, p.r6, k.sk_num)  # host order
    kread(p, scratch, 0, 2, p.r6, k.sk_dport)  # network order
    p.r1 = scratch.u16[0]
    p.be(p.r1, 16)
    ev.u16[E["dport"]] = p.r1
    p.r1 = ev.u16[E["family"]]
    with p.If(p.r1 == AF_INET):
        kread(p, ev, E["saddr"], 4, p.r6, k.sk_rcv_saddr)
        kread(p, ev, E["daddr"], 4, p.r6, k.sk_daddr)
    with p.Else():
        kread(p, ev, E["saddr"], 16, p.r6, k.sk_v6_rcv_saddr)
        kread(p, ev, E["daddr"], 16, p.r6, k.sk_v6_daddr)
