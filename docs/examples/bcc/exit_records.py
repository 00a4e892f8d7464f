#!/usr/bin/env python3
"""bcc equivalent of ../exit_records.py."""
import subprocess
import sys

from bcc import BPF

b = BPF(text=r"""
#include <linux/sched.h>
struct exit_event { u32 pid; s32 code; char comm[16]; };
BPF_RINGBUF_OUTPUT(events, 16);
TRACEPOINT_PROBE(sched, sched_process_exit) {
    struct exit_event *ev = events.ringbuf_reserve(sizeof(*ev));
    if (!ev)
        return 0;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    ev->pid = args->pid;
    ev->code = task->exit_code;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    events.ringbuf_submit(ev, 0);
    return 0;
}
""")


def show(ctx, data, size):
    e = b["events"].event(data)
    print(f"{e.pid:>8} {e.code >> 8:>4} {e.comm.decode()}")


b["events"].open_ring_buffer(show)
child = subprocess.Popen(sys.argv[1:]) if sys.argv[1:] else None
try:
    while child is None or child.poll() is None:
        b.ring_buffer_poll(200)
except KeyboardInterrupt:
    pass
b.ring_buffer_consume()
