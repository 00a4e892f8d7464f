#!/usr/bin/env python3
"""bcc equivalent of ../opens_per_pid.py."""
import subprocess
import sys

from bcc import BPF

b = BPF(text=r"""
BPF_HASH(counts, u32, u64, 10240);
TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    counts.increment(pid);
    return 0;
}
""")
try:
    subprocess.run(sys.argv[1:], check=False) if sys.argv[1:] else sys.stdin.read()
except KeyboardInterrupt:
    pass
for pid, n in sorted(b["counts"].items(), key=lambda kv: -kv[1].value)[:10]:
    print(f"{pid.value:>8} {n.value:>6}")
