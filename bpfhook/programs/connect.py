"""Outbound connection attempts from cgroup connect4/connect6 (cgroup_sock_addr), run in the
connecting task before the kernel's connect(): pid, tid, comm, cgroup, netns cookie, the
destination and the socket (its address joins the state events). A UDP connect() is a UDP
flow (kind udp, the metrics' udp); other protocols are skipped. It never refuses (returns
1). Unstreamed, a TCP connect() is only counted: the state program enters it at SYN_SENT.
"""
from bpfhook import records
from pybpf.asm import Program

from .conn_common import (IPPROTO_TCP, IPPROTO_UDP, account, current_task, define_metrics, emit, remember,
                          task_reader)

ALLOW = 1
HOOKS = {4: "connect4", 6: "connect6"}
_CTX_FIELDS = ("user_ip4", "user_ip6", "user_port", "family", "protocol", "sk")


def build(maps, kernel, version):
    """The program for connect4 (version 4) or connect6 (version 6); kernel: conn_common.KernelOffsets."""
    at = {name: getattr(kernel, "ctx_" + name) for name in _CTX_FIELDS}
    p = Program(f"bh_{HOOKS[version]}", prog_type="cgroup_sock_addr")
    ev = p.stack.alloc(records.EVENT)
    scratch = p.stack.alloc(8)

    p.r9 = p.r1
    p.r6 = p.r9.u32[at["protocol"]]
    p.r1 = p.r6
    with p.If(p.r1 != IPPROTO_TCP):
        with p.If(p.r6 != IPPROTO_UDP):
            p.exit(ALLOW)
    if not maps.stream:
        with p.If(p.r6 == IPPROTO_TCP):  # the state program follows it from SYN_SENT on
            emit(p, maps, ev, p.r9, scratch)  # counted, as streaming would have sent it
            p.exit(ALLOW)
    ev.zero()
    p.call("ktime_get_ns")
    ev.ts_ns = p.r0
    ev.protocol = p.r6
    ev.kind = records.EV_CONNECT
    p.r1 = p.r9.u32[at["family"]]
    ev.family = p.r1
    p.r1 = p.r9.u32[at["user_port"]]  # network order in the low 16 bits
    p.be(p.r1, 16)
    ev.dport = p.r1
    if version == 4:
        p.r1 = p.r9.u32[at["user_ip4"]]
        ev.daddr.u32[0] = p.r1
    else:
        for word in range(4):
            p.r1 = p.r9.u32[at["user_ip6"] + 4 * word]
            ev.daddr.u32[4 * word] = p.r1
    p.r1 = p.r9.u64[at["sk"]]
    ev.sock = p.r1
    p.call("get_socket_cookie", p.r9)
    ev.cookie = p.r0
    p.call("get_netns_cookie", p.r9)
    ev.netns = p.r0
    current_task(p, ev, task=task_reader(kernel, p.prog_type))
    with p.If(p.r6 == IPPROTO_UDP):
        ev.kind = records.EV_UDP
        account(p, (ev.cgroup_id, ev.netns), [("udp", 1)])
        remember(p, maps, ev, scratch)
    emit(p, maps, ev, p.r9, scratch)
    p.exit(ALLOW)
    define_metrics(p, maps)
    return p

