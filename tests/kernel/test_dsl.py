"""The DSL's layer above single instructions, loaded and run in the kernel: named fields of
construct layouts, pybpf's constants as immediates, network-order loads and stores, and errors
that end at the emitting line."""
import os
import struct
import subprocess
import traceback

import construct as c
import pytest

from pybpf import consts
from pybpf.asm import Program
from pybpf.errors import VerifierError
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.uapi import MapType, UpdateFlags

if os.geteuid() != 0:
    pytest.skip("needs root to load BPF programs", allow_module_level=True)

ETH = c.Struct("dst" / c.Bytes(6), "src" / c.Bytes(6), "proto" / c.Int16ub)
IPV4 = c.Struct("vhl" / c.Int8ul, "tos" / c.Int8ul, "len" / c.Int16ub, "id" / c.Int16ub, "frag" / c.Int16ub,
                "ttl" / c.Int8ul, "protocol" / c.Int8ul, "check" / c.Int16ub, "saddr" / c.Int32ub,
                "daddr" / c.Int32ub)
STATS = c.Struct("packets" / c.Int64ul, "bytes" / c.Int64ul, "last_port" / c.Int16ub, "family" / c.Int16ul,
                 c.Padding(4))


def frame(proto, ip_protocol=6, size=64):
    eth = ETH.build(dict(dst=b"\xff" * 6, src=b"\x02" * 6, proto=proto))
    ip = IPV4.build(dict(vhl=0x45, tos=0, len=size - 14, id=0, frag=0, ttl=64, protocol=ip_protocol, check=0,
                         saddr=0x0A000001, daddr=0x0A000002))
    return (eth + ip + bytes(2) + struct.pack(">H", 8080)).ljust(size, b"\0")


def test_xdp_counter_with_named_fields_consts_and_network_order():
    with Map(MapType.HASH, key=4, value=STATS, max_entries=8, name="dsl_stats") as stats:
        p = Program("dsl_count", prog_type="xdp")
        p.r6 = p.r1.u32[0]  # xdp_md.data
        p.r7 = p.r1.u32[4]  # xdp_md.data_end
        p.r1 = p.r6
        p.r1 += ETH.sizeof() + IPV4.sizeof() + 4
        with p.If(p.r1 > p.r7):
            p.exit(consts.XDP_PASS)
        eth = p.ptr(p.r6, ETH)
        p.r2 = eth.proto  # host order
        with p.If(p.r2 != consts.ETH_P_IP):
            p.exit(consts.XDP_PASS)
        p.r8 = p.r6
        p.r8 += ETH.sizeof()
        ip = p.ptr(p.r8, IPV4)
        key = p.stack.alloc(4)
        p.r1 = ip.protocol
        key.u32[0] = p.r1
        new = p.stack.alloc(STATS)
        new.zero()
        new.family = 2
        new.packets = 1
        p.r1 = p.r7
        p.r1 -= p.r6
        new.bytes = p.r1
        p.r1 = p.r8.be16[IPV4.sizeof() + 2]  # the TCP destination port, to host order
        new.last_port = p.r1  # and back to network order in the record
        p.call("map_update_elem", stats, key, new, UpdateFlags.NOEXIST)
        with p.If(p.r0 != 0):  # there already: count in place
            p.call("map_lookup_elem", stats, key)
            with p.If(p.r0 == 0):
                p.exit(consts.XDP_ABORTED)
            old = p.ptr(p.r0, STATS)
            p.r1 = 1
            old.packets += p.r1
            p.r9 = p.r0
            p.r1 = p.r7
            p.r1 -= p.r6
            old.bytes += p.r1
            p.r9.be16[STATS.sizeof() - 8] = 443  # last_port, as an int in network order
        p.exit(consts.XDP_DROP)
        with load(p) as prog:
            assert prog.test_run(frame(consts.ETH_P_IPV6)).retval == consts.XDP_PASS
            assert prog.test_run(frame(consts.ETH_P_IP)).retval == consts.XDP_DROP
            assert prog.test_run(frame(consts.ETH_P_IP, size=100)).retval == consts.XDP_DROP
            assert prog.test_run(frame(consts.ETH_P_IP, consts.IPPROTO_UDP)).retval == consts.XDP_DROP
        tcp, udp = stats.lookup(consts.IPPROTO_TCP), stats.lookup(consts.IPPROTO_UDP)
        assert (tcp.packets, tcp.bytes, tcp.last_port, tcp.family) == (2, 164, 443, 2)
        assert (udp.packets, udp.bytes, udp.last_port) == (1, 64, 8080)


def test_a_verifier_rejection_ends_at_the_emitting_line_with_a_hint():
    with Map(MapType.HASH, key=4, value=STATS, max_entries=1, name="dsl_null") as stats:
        p = Program("dsl_null", prog_type="socket_filter")
        key = p.stack.alloc(4)
        key.u32[0] = 0
        p.call("map_lookup_elem", stats, key)
        p.r0 = p.ptr(p.r0, STATS).packets  # no NULL check
        p.exit()
        line = traceback.extract_stack()[-1].lineno - 2
        with pytest.raises(VerifierError) as info:
            load(p)
    last = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (last.filename, last.lineno) == (__file__, line)
    assert last.line == "p.r0 = p.ptr(p.r0, STATS).packets  # no NULL check"
    assert "check `p.r0 != 0` in `p.If`" in str(info.value) and info.value.hint


# -- typed contexts and kernel pointer chains ---------------------------------------------------

def test_xdp_context_fields_by_name():
    p = Program("dsl_xdp_ctx", prog_type="xdp")
    p.r0 = p.ctx.data_end
    p.r2 = p.ctx.data
    p.r0 -= p.r2
    p.exit()
    with load(p) as prog:
        assert prog.test_run(bytes(77)).retval == 77


PARENT = c.Struct("ppid" / c.Int32sl, "tgid" / c.Int32sl, "comm" / c.Bytes(16))


@pytest.mark.parametrize("hook", ["raw_tracepoint", "tp_btf"])
def test_exec_parent_pid_through_a_pointer_chain(hook):
    """raw_tracepoint reads task->real_parent->tgid with probe_read_kernel; tp_btf, whose
    argument the verifier trusts, with plain loads: the same statements either way."""
    from pybpf import attach

    with Map(MapType.HASH, key=4, value=PARENT, max_entries=256, name="dsl_parents") as parents:
        p = Program("dsl_exec", cpu="auto", **{hook: "sched_process_exec"})  # signed fields: any kernel
        p.r6 = p.r1
        ctx = p.context(p.r6)
        rec = p.stack.alloc(PARENT)
        rec.zero()
        p.r7 = ctx.p.real_parent.tgid
        rec.ppid = p.r7
        p.r7 = ctx.p.tgid
        rec.tgid = p.r7
        p.read_kernel_str(rec.comm, ctx.p.comm)
        key = p.stack.alloc(4)
        p.r1 = rec.tgid
        key.u32[0] = p.r1
        p.call("map_update_elem", parents, key, rec, UpdateFlags.ANY)
        p.exit(0)
        text = str(p)
        assert ("probe_read_kernel#113" in text) == (hook == "raw_tracepoint")
        with load(p) as prog, (attach.raw_tracepoint(prog, "sched_process_exec") if hook == "raw_tracepoint"
                    else attach.tracing(prog)):
            child = subprocess.Popen(["/bin/true"])
            child.wait()
        got = parents.lookup(child.pid)
    assert (got.ppid, got.tgid, got.comm.rstrip(b"\0")) == (os.getpid(), child.pid, b"true")


def test_tracepoint_context_from_tracefs_and_read_user_str(tmp_path):
    from pybpf import attach

    wanted = str(tmp_path / "dsl-opened-this")
    with Map(MapType.HASH, key=4, value=256, max_entries=1, name="dsl_open") as first:
        p = Program("dsl_open", tracepoint="syscalls:sys_enter_openat", cpu="auto")
        p.r6 = p.r1
        ctx = p.context(p.r6)
        p.r7 = p.task().tgid
        with p.If(p.r7 != os.getpid()):
            p.exit(0)
        name = p.stack.alloc(256)
        name.zero()
        p.read_user_str(name, ctx.filename)
        key = p.stack.alloc(4)
        key.u32[0] = 0
        p.call("map_update_elem", first, key, name, UpdateFlags.NOEXIST)  # the first open only
        p.exit(0)
        with load(p) as prog, attach.tracepoint(prog, "syscalls:sys_enter_openat"):
            try:
                open(wanted).close()
            except FileNotFoundError:
                pass
        assert first.lookup(0).rstrip(b"\0").decode() == wanted


def test_expressions_and_borrowed_registers_survive_calls():
    p = Program("dsl_expr", prog_type="socket_filter")
    p.r2, p.r3 = 5, 7
    p.r0 = (p.r2 + p.r3) * (p.ctx.len - 46)  # 12 * (50 - 46): skb->len is 64 less the Ethernet header
    with p.let() as kept:
        kept.set(p.r0 + 2)  # 50
        p.call("ktime_get_ns")  # clobbers r0-r5; the borrowed register stays
        p.r0 = kept * 2
    p.exit()
    with load(p) as prog:
        assert prog.test_run(bytes(64)).retval == 100
