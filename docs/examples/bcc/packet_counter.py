#!/usr/bin/env python3
"""bcc equivalent of ../packet_counter.py (bcc has no test_run wrapper: it attaches to a device)."""
import sys
import time

from bcc import BPF

b = BPF(text=r"""
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
BPF_PERCPU_ARRAY(counts, u64, 256);
int count(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    if ((void *)(ip + 1) > data_end)
        return XDP_PASS;
    if (eth->h_proto != htons(ETH_P_IP))
        return XDP_PASS;
    u32 key = ip->protocol;
    u64 *value = counts.lookup(&key);
    if (value)
        *value += 1;
    return XDP_PASS;
}
""")
b.attach_xdp(sys.argv[1], b.load_func("count", BPF.XDP), 0)
time.sleep(int(sys.argv[2]))
b.remove_xdp(sys.argv[1], 0)
for proto in (6, 17, 1):
    print(f"protocol {proto}: {sum(b['counts'][proto])} packets")
