#!/usr/bin/env python3
"""openat() calls per process, from the syscalls:sys_enter_openat tracepoint, in a hash map.

    opens_per_pid.py [COMMAND...]   (with a command: while it runs; else until Ctrl-C)"""
import subprocess
import sys

from pybpf import attach, consts
from pybpf.asm import Program
from pybpf.maps import Map
from pybpf.prog import load

counts = Map("hash", key=4, value=8, max_entries=10240)

p = Program("opens", tracepoint="syscalls:sys_enter_openat")
key, one = p.stack.alloc(4), p.stack.alloc(8)
p.call("get_current_pid_tgid")
p.r0 >>= 32  # the process id (tgid) is the upper half
key.u32[0] = p.r0
one.u64[0] = 1
p.call("map_update_elem", counts, key, one, consts.BPF_NOEXIST)
with p.If(p.r0 != 0):  # already counted: add one in place
    p.call("map_lookup_elem", counts, key)
    with p.If(p.r0 != 0):
        p.r1 = 1
        p.r0.u64[0] += p.r1
p.exit(0)

if __name__ == "__main__":
    with load(p) as prog, attach.tracepoint(prog, p.tracepoint):
        try:
            subprocess.run(sys.argv[1:], check=False) if sys.argv[1:] else sys.stdin.read()
        except KeyboardInterrupt:
            pass
    for pid, n in sorted(counts.items(), key=lambda kv: -kv[1])[:10]:
        print(f"{pid:>8} {n:>6}")
