#!/usr/bin/env python3
"""bcc equivalent of ../exec_events.py."""
import subprocess
import sys

from bcc import BPF

b = BPF(text=r"""
#include <linux/sched.h>
struct event { u32 pid; u32 ppid; char comm[16]; };
BPF_RINGBUF_OUTPUT(events, 16);
RAW_TRACEPOINT_PROBE(sched_process_exec) {
    struct task_struct *task = (struct task_struct *)ctx->args[0];
    struct event ev = {};
    ev.pid = task->tgid;
    ev.ppid = task->real_parent->tgid;
    bpf_probe_read_kernel_str(&ev.comm, sizeof(ev.comm), task->comm);
    events.ringbuf_output(&ev, sizeof(ev), 0);
    return 0;
}
""")


def show(ctx, data, size):
    e = b["events"].event(data)
    print(f"{e.pid:>8} {e.ppid:>8} {e.comm.decode()}")


b["events"].open_ring_buffer(show)
child = subprocess.Popen(sys.argv[1:]) if sys.argv[1:] else None
try:
    while child is None or child.poll() is None:
        b.ring_buffer_poll(200)
except KeyboardInterrupt:
    pass
b.ring_buffer_consume()
