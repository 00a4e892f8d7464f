"""The network namespaces in use: a task iterator (bpf_iter_task, 5.8) writes one TASK_NETNS
(namespace inode, pid) per process, and per thread in another namespace than its process's
(setns() is per thread: a CNI plugin, a Go program's locked thread). The monitor's socket
walks run in each; /proc would cost a stat() per process, and miss the threads.
"""
from bpfhook.records import TASK_NETNS
from pybpf.asm import Program

from .conn_common import typed_field
from .existing import write_out

FUNC = "bpf_iter_task"  # the iterator target's function: the program's attach_btf_id
# struct bpf_iter__task { struct bpf_iter_meta *meta; struct task_struct *task; }
CTX_TASK = 8


def build(kernel):
    """The iterator program: load as tracing, expected_attach_type trace_iter, attach_btf_id
    kernel.func(FUNC)[0]; run with pybpf.attach.iterator and run_iterator."""
    p = Program("bh_task_netns", prog_type="tracing")
    out = p.stack.alloc(TASK_NETNS)

    p.r9 = p.r1  # ctx
    p.r6 = p.r9.u64[CTX_TASK]
    with p.If(p.r6 == 0):  # the end of the walk
        p.exit(0)
    _netns_inum(p, kernel, p.r6)
    with p.If(p.r0 == 0):  # an exiting task: no namespaces
        p.exit(0)
    out.netns_ino = p.r0
    p.r1 = typed_field(p.r6, kernel, "task_pid")
    out.pid = p.r1
    p.r2 = typed_field(p.r6, kernel, "task_tgid")
    with p.If(p.r1 != p.r2):  # a thread: written only when it entered another namespace (setns)
        p.r1 = typed_field(p.r6, kernel, "task_group_leader")
        _netns_inum(p, kernel, p.r1)
        p.r1 = out.netns_ino
        with p.If(p.r0 == p.r1):
            p.exit(0)
    write_out(p, p.r9, out, TASK_NETNS.sizeof())
    p.exit(0)
    return p


def _netns_inum(p, kernel, task):
    """r0 = the inode number of the network namespace of the task at register `task` (typed
    loads: an exiting task's NULL nsproxy reads as 0 all the way down)."""
    p.r0 = typed_field(task, kernel, "task_nsproxy")
    p.r0 = typed_field(p.r0, kernel, "nsproxy_net")
    p.r0 = typed_field(p.r0, kernel, "net_inum")
