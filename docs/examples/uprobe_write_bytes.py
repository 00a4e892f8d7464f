#!/usr/bin/env python3
"""Bytes each process passes to libc's write(), from a uprobe: the third argument, in pt_regs.

    uprobe_write_bytes.py COMMAND...   (counts while it runs)"""
import subprocess
import sys

from pybpf import attach
from pybpf.asm import Program
from pybpf.maps import Map
from pybpf.prog import load

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
totals = Map("hash", key=4, value=8, max_entries=1024)

p = Program("write_bytes", prog_type="kprobe")  # uprobes run kprobe programs
p.r6 = p.ctx.dx  # write(fd, buf, count): count is the third argument (rdx)
key, zero = p.stack.alloc(4), p.stack.alloc(8)
p.call("get_current_pid_tgid")
p.r0 >>= 32
key.u32[0] = p.r0
zero.u64[0] = 0
p.call("map_update_elem", totals, key, zero, 1)  # BPF_NOEXIST: a new process starts at 0
p.call("map_lookup_elem", totals, key)
with p.If(p.r0 != 0):
    p.r0.u64[0] += p.r6
p.exit(0)

if __name__ == "__main__":
    with load(p) as prog, attach.uprobe(prog, LIBC, "write"):
        subprocess.run(sys.argv[1:])
    for pid, n in sorted(totals.items(), key=lambda kv: -kv[1])[:10]:
        print(f"{pid:>8} {n:>10}")
