#!/usr/bin/env python3
"""bcc equivalent of ../connect4_filter.py (bcc has no cgroup attach: through bpftool)."""
import os
import subprocess
import sys

from bcc import BPF

port = int(sys.argv[1])
b = BPF(text=r"""
#include <uapi/linux/bpf.h>
int deny_port(struct bpf_sock_addr *ctx) {
    if (ctx->user_port == htons(PORT))
        return 0;
    return 1;
}
""", cflags=[f"-DPORT={port}"])
fn = b.load_func("deny_port", BPF.CGROUP_SOCK_ADDR, attach_type=BPF.CGROUP_INET4_CONNECT)
cgroup = f"/sys/fs/cgroup/unified/bcc-example-{os.getpid()}"
os.mkdir(cgroup)
try:
    b.attach_func(fn, os.open(cgroup, os.O_RDONLY), BPF.CGROUP_INET4_CONNECT)
    enter = lambda: open(os.path.join(cgroup, "cgroup.procs"), "w").write(str(os.getpid()))  # noqa: E731
    code = subprocess.run(sys.argv[2:], preexec_fn=enter).returncode
finally:
    os.rmdir(cgroup)
sys.exit(code)
