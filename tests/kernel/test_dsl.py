"""The DSL's layer above single instructions, loaded and run in the kernel: named fields of
construct layouts, pybpf's constants as immediates, network-order loads and stores, and errors
that end at the emitting line."""
import os
import struct
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
