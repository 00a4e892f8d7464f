#!/usr/bin/env python3
"""Packets per IP protocol, counted in XDP in a per-CPU array; run here on made-up frames."""
import construct as c

from pybpf import consts
from pybpf.asm import Program
from pybpf.maps import Map
from pybpf.prog import load

FRAME = c.Struct("eth" / c.Struct("dst" / c.Bytes(6), "src" / c.Bytes(6), "proto" / c.Int16ub),
                 "ip" / c.Struct("vhl" / c.Int8ul, c.Padding(8), "protocol" / c.Int8ul, c.Padding(10)))
counts = Map("percpu_array", key=4, value=8, max_entries=256)

p = Program("count", prog_type="xdp")
p.r6, p.r7 = p.ctx.data, p.ctx.data_end
p.r1 = p.r6
p.r1 += FRAME.sizeof()
with p.If(p.r1 > p.r7):  # the verifier wants the bounds checked before the reads
    p.exit(consts.XDP_PASS)
frame, key = p.ptr(p.r6, FRAME), p.stack.alloc(4)
p.r1 = frame.eth.proto  # network order in the frame, host order in r1
with p.If(p.r1 != consts.ETH_P_IP):
    p.exit(consts.XDP_PASS)
p.r1 = frame.ip.protocol
key.u32[0] = p.r1
p.call("map_lookup_elem", counts, key)
with p.If(p.r0 != 0):
    p.r1 = 1
    p.r0.u64[0] += p.r1
p.exit(consts.XDP_PASS)

if __name__ == "__main__":
    with load(p) as prog:
        for proto, n in ((consts.IPPROTO_TCP, 3), (consts.IPPROTO_UDP, 2), (consts.IPPROTO_ICMP, 1)):
            data = FRAME.build(dict(eth=dict(dst=bytes(6), src=bytes(6), proto=consts.ETH_P_IP),
                                    ip=dict(vhl=0x45, protocol=proto)))
            for _ in range(n):
                prog.test_run(data.ljust(64, b"\0"))
    for proto in (consts.IPPROTO_TCP, consts.IPPROTO_UDP, consts.IPPROTO_ICMP):
        print(f"protocol {proto}: {sum(counts.lookup(proto))} packets")
