#!/usr/bin/env python3
"""Refuse IPv4 connect() to one port from the processes of a cgroup (cgroup_sock_addr).

    connect4_filter.py PORT COMMAND...   (runs COMMAND in a new cgroup with the filter)"""
import os
import socket
import subprocess
import sys

from pybpf import attach
from pybpf.asm import Program
from pybpf.prog import load

port = int(sys.argv[1])
p = Program("deny_port", prog_type="cgroup_sock_addr", expected_attach_type="cgroup_inet4_connect")
p.r2 = p.ctx.user_port  # network order, in the low 16 bits
with p.If(p.r2 == socket.htons(port)):
    p.exit(0)  # 0: connect() fails with EPERM
p.exit(1)

if __name__ == "__main__":
    cgroup = os.path.join(attach.cgroup2_root(), f"pybpf-example-{os.getpid()}")
    os.mkdir(cgroup)
    try:
        with load(p) as prog, attach.cgroup(prog, "connect4", cgroup):
            enter = lambda: open(os.path.join(cgroup, "cgroup.procs"), "w").write(str(os.getpid()))  # noqa: E731
            sys.exit(subprocess.run(sys.argv[2:], preexec_fn=enter).returncode)
    finally:
        os.rmdir(cgroup)
