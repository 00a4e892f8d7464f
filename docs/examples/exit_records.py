#!/usr/bin/env python3
"""Process exits with their exit code, as construct records reserved in a ring buffer.

    exit_records.py [COMMAND...]   (with a command: the exits while it runs; else until Ctrl-C)"""
import subprocess
import sys

import construct as c

from pybpf import attach
from pybpf.asm import Program
from pybpf.maps import Map
from pybpf.prog import load
from pybpf.readers.ringbuf import RingBuffer

EXIT = c.Struct("pid" / c.Int32ul, "code" / c.Int32sl, "comm" / c.Bytes(16))
events = Map("ringbuf", max_entries=1 << 16)

p = Program("exits", tracepoint="sched:sched_process_exit", cpu="auto")  # auto: pre-6.6 kernels too
p.r6 = p.r1
p.call("ringbuf_reserve", events, EXIT.sizeof(), 0)
with p.If(p.r0 == 0):  # the ring is full: drop this one
    p.exit(0)
p.r7 = p.r0  # the record: kept in r7 across the calls below
ctx, ev = p.context(p.r6), p.ptr(p.r7, EXIT)
p.r1 = ctx.pid
ev.pid = p.r1
p.r1 = p.task().exit_code
ev.code = p.r1
p.call("get_current_comm", ev.addr("comm"), 16)
p.call("ringbuf_submit", p.r7, 0)
p.exit(0)


def show(e):
    print(f"{e.pid:>8} {e.code >> 8:>4} {e.comm.partition(bytes(1))[0].decode()}")


if __name__ == "__main__":
    with load(p) as prog, attach.tracepoint(prog, p.tracepoint), RingBuffer(events, show, EXIT) as ring:
        child = subprocess.Popen(sys.argv[1:]) if sys.argv[1:] else None
        try:
            while child is None or child.poll() is None:
                ring.read(timeout=0.2)
        except KeyboardInterrupt:
            pass
        ring.drain()
