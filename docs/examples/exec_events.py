#!/usr/bin/env python3
"""Each exec with its parent pid and command, through a ring buffer: task->real_parent->tgid.

    exec_events.py [COMMAND...]   (with a command: the execs while it runs; else until Ctrl-C)"""
import subprocess
import sys

import construct as c

from pybpf import attach
from pybpf.asm import Program
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.readers.ringbuf import RingBuffer

EVENT = c.Struct("pid" / c.Int32ul, "ppid" / c.Int32ul, "comm" / c.Bytes(16))
events = Map("ringbuf", max_entries=1 << 16)

p = Program("execs", raw_tracepoint="sched_process_exec", cpu="auto")  # auto: kernels before 6.6 too
p.r6 = p.r1  # keep the context: calls clobber r1-r5
task, ev = p.context(p.r6).p, p.stack.alloc(EVENT)
p.r7 = task.tgid
ev.pid = p.r7
p.r7 = task.real_parent.tgid
ev.ppid = p.r7
p.read_kernel_str(ev.comm, task.comm)
p.call("ringbuf_output", events, ev, EVENT.sizeof(), 0)
p.exit(0)


def show(e):
    print(f"{e.pid:>8} {e.ppid:>8} {e.comm.partition(bytes(1))[0].decode()}")


if __name__ == "__main__":
    with load(p) as prog, attach.raw_tracepoint(prog, p.raw_tracepoint), RingBuffer(events, show, EVENT) as ring:
        child = subprocess.Popen(sys.argv[1:]) if sys.argv[1:] else None
        try:
            while child is None or child.poll() is None:
                ring.read(timeout=0.2)
        except KeyboardInterrupt:
            pass
        ring.drain()
