#!/usr/bin/env python3
"""bcc equivalent of ../uprobe_write_bytes.py."""
import subprocess
import sys

from bcc import BPF

b = BPF(text=r"""
#include <uapi/linux/ptrace.h>
BPF_HASH(totals, u32, u64, 1024);
int write_bytes(struct pt_regs *ctx) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    totals.increment(pid, PT_REGS_PARM3(ctx));
    return 0;
}
""")
b.attach_uprobe(name="c", sym="write", fn_name="write_bytes")
subprocess.run(sys.argv[1:])
for pid, n in sorted(b["totals"].items(), key=lambda kv: -kv[1].value)[:10]:
    print(f"{pid.value:>8} {n.value:>10}")
