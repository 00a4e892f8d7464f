"""Mirror: clone every packet (or every matching one) to an observer's egress.

A sched_cls program for tcx or a direct-action cls_bpf filter: bpf_clone_redirect(skb,
observer_ifindex, 0) when the packet matches, then return -1, "no verdict" on both hooks
(TCX_NEXT, TC_ACT_UNSPEC): the packet goes on untouched to whatever else is attached. The
observer's ifindex is an immediate: one program per mirror. The filter reads eth, IPv4 (any
IHL) or IPv6 (no extension headers) and the ports, each read behind a bounds check; a
packet too short to tell is not mirrored.
"""
from pybpf.asm import Program

# struct __sk_buff
SKB_DATA, SKB_DATA_END = 76, 80
ETH_HLEN = 14
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
IPV4_MIN, IPV6_HLEN = 20, 40
NO_VERDICT = -1  # TCX_NEXT == TC_ACT_UNSPEC
CLONE_TO_EGRESS = 0  # flags of bpf_clone_redirect: 0 = the target's egress

PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
WITH_PORTS = (6, 17, 132)  # protocols whose header starts with source and destination ports


def build(observer_ifindex, proto=None, port=None):
    """The program: observer_ifindex > 0; proto a name of PROTOCOLS or None; port 1..65535 or None."""
    p = Program("bh_mirror", prog_type="sched_cls")
    p.r6 = p.r1
    if proto is not None or port is not None:
        _match(p, PROTOCOLS[proto] if proto is not None else None, port)
    p.call("clone_redirect", p.r6, observer_ifindex, CLONE_TO_EGRESS)
    p.label("pass")
    p.exit(NO_VERDICT)
    return p


def _match(p, proto, port):
    """Fall through when the packet matches; jump to "pass" otherwise.

    Leaves r2 = data, r3 = data_end, r7 = L4 protocol, r8 = L4 header."""
    p.r2 = p.r6.u32[SKB_DATA]
    p.r3 = p.r6.u32[SKB_DATA_END]
    p.r4 = p.r2 + (ETH_HLEN + IPV4_MIN)  # the shorter of the two IP headers
    p.jump_if(p.r4 > p.r3, "pass")
    p.r5 = p.r2.u16[12]  # h_proto, big endian
    p.be(p.r5, 16)
    with p.If(p.r5 == ETH_P_IP):
        p.r7 = p.r2.u8[ETH_HLEN + 9]
        p.r8 = p.r2.u8[ETH_HLEN]
        p.r8 &= 0x0F  # IHL in 32-bit words: at most 60 bytes, a bound the verifier can follow
        p.r8 <<= 2
        p.r8 += p.r2
        p.r8 += ETH_HLEN
    with p.Elif(p.r5 == ETH_P_IPV6):
        p.r4 = p.r2 + (ETH_HLEN + IPV6_HLEN)
        p.jump_if(p.r4 > p.r3, "pass")
        p.r7 = p.r2.u8[ETH_HLEN + 6]  # next header
        p.r8 = p.r2 + (ETH_HLEN + IPV6_HLEN)
    with p.Else():
        p.goto("pass")
    if proto is not None:
        p.jump_if(p.r7 != proto, "pass")
    if port is None:
        return
    if proto is None:  # a port alone means TCP, UDP or SCTP
        for number in WITH_PORTS[:-1]:
            p.jump_if(p.r7 == number, "ports")
        p.jump_if(p.r7 != WITH_PORTS[-1], "pass")
    p.label("ports")
    p.r4 = p.r8 + 4
    p.jump_if(p.r4 > p.r3, "pass")
    p.r5 = p.r8.u16[0]  # source port
    p.be(p.r5, 16)
    p.jump_if(p.r5 == port, "mirror")
    p.r5 = p.r8.u16[2]  # destination port
    p.be(p.r5, 16)
    p.jump_if(p.r5 != port, "pass")
    p.label("mirror")

